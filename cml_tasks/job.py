"""Naming a CML job: its Overview page URL, or its parts (user or team, project, job id).

Everything is validated here, before any request, so a typo never reaches the network.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from cml_tasks.errors import CMLInputError

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
_EXAMPLE = "https://ml.example.com/alice/risk-analysis/jobs/208"


class JobRef(BaseModel):
    """A CML job. `host` is the workspace base URL, or None to take it from the settings."""

    model_config = ConfigDict(frozen=True)

    username: str
    project: str
    job_id: str
    host: str | None = None

    @classmethod
    def from_parts(
        cls, username: str, project: str, job_id: str | int, host: str | None = None
    ) -> JobRef:
        job_id = str(job_id)
        for label, value, pattern in (
            ("username or team", username, _USERNAME),
            ("project name", project, _PROJECT),
            ("job id", job_id, _JOB_ID),
        ):
            if not isinstance(value, str) or not pattern.match(value):
                raise CMLInputError(
                    f"Invalid {label} {value!r}: expected letters, digits, '-', '_' or '.' "
                    f"as in {_EXAMPLE}"
                )
        return cls(
            username=username,
            project=project,
            job_id=job_id,
            host=normalize_base_url(host) if host else None,
        )

    @classmethod
    def from_url(cls, url: str) -> JobRef:
        """Parse a job Overview page URL: `http(s)://<host>/<user>/<project>/jobs/<job id>`."""
        base = normalize_base_url(url, what="job URL")
        path = urlsplit(url.strip()).path.rstrip("/").split("/")[1:]
        if len(path) != 4 or path[2] != "jobs":
            raise CMLInputError(
                f"Invalid job URL {url!r}: expected the job's Overview page URL, "
                f"of the form {_EXAMPLE}"
            )
        return cls.from_parts(path[0], path[1], path[3], host=base)

    @classmethod
    def parse(cls, job: str | JobRef) -> JobRef:
        """Accept a JobRef, a job page URL, or `user/project/job_id`."""
        if isinstance(job, JobRef):
            return job
        text = job.strip()
        if "://" in text:
            return cls.from_url(text)
        parts = text.strip("/").split("/")
        if len(parts) == 4 and parts[2] == "jobs":
            parts = [parts[0], parts[1], parts[3]]
        if len(parts) != 3:
            raise CMLInputError(
                f"Invalid job {job!r}: give the job's page URL ({_EXAMPLE}) or user/project/job_id"
            )
        return cls.from_parts(*parts)

    def with_host(self, host: str | None) -> JobRef:
        """Resolve the host: the job's own, else the settings'; they must agree."""
        if host is not None:
            host = normalize_base_url(host)
        if self.host and host and self.host != host:
            raise CMLInputError(
                f"The job URL's host {self.host} is not CML_HOST {host}: refusing to send "
                "the API key to another host. Unset CML_HOST or use a URL on that host."
            )
        resolved = self.host or host
        if resolved is None:
            raise CMLInputError(
                f"No CML host for job {self.slug}: give the job's full page URL or set CML_HOST"
            )
        return self.model_copy(update={"host": resolved})

    @property
    def slug(self) -> str:
        """Short display name, e.g. `risk-analysis/208`."""
        return f"{self.project}/{self.job_id}"

    @property
    def path(self) -> str:
        """`user/project/jobs/id`: the path of both the page and the v1 API calls."""
        return f"{self.username}/{self.project}/jobs/{self.job_id}"

    @property
    def page_url(self) -> str:
        """The job's Overview page in the CML web UI."""
        return f"{self._base()}/{self.path}"

    @property
    def start_url(self) -> str:
        """The v1 start call."""
        return f"{self._base()}/api/v1/projects/{self.path}/start"

    def _base(self) -> str:
        if self.host is None:
            raise CMLInputError(f"No CML host for job {self.slug}")
        return self.host


def normalize_base_url(url: str, *, what: str = "CML host") -> str:
    """`scheme://host[:port]`, lower-cased; rejects user info, which would leak into logs."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise CMLInputError(f"Invalid {what} {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CMLInputError(f"Invalid {what} {url!r}: expected http(s)://host")
    if parts.username is not None or parts.password is not None:
        raise CMLInputError(
            f"Invalid {what}: credentials inside a URL are not accepted; use CML_API_KEY"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def is_loopback(base_url: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1: plain http cannot leak off the machine."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
