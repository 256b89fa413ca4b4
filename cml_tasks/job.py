"""Naming a CML job: its Overview page URL, or its parts (user or team, project, job id).

Everything is validated here, before any request, so a typo never reaches the network.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict

from cml_tasks._text import has_unsafe, printable
from cml_tasks.errors import CMLInputError

# Always used with `fullmatch`: `$` would let a trailing newline through.
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,99}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MAX_URL = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
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
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise CMLInputError(
                    f"Invalid {label} {printable(repr(value)[:120])}: expected letters, digits, "
                    f"'-', '_' or '.' as in {_EXAMPLE}"
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
        parts = _split_url(url, "job URL")
        if parts.query or parts.fragment or url.strip()[-1:] in ("?", "#"):
            # Dropped silently, a `?` or `#` could hide a mistyped or pasted-together URL.
            raise CMLInputError(
                f"Invalid job URL {_shown(url)}: a job URL has no ?query or #fragment; "
                f"give the Overview page URL, e.g. {_EXAMPLE}"
            )
        path = parts.path.rstrip("/").split("/")[1:]
        if len(path) != 4 or path[2] != "jobs":
            raise CMLInputError(
                f"Invalid job URL {_shown(url)}: expected the job's Overview page URL, "
                f"of the form {_EXAMPLE}"
            )
        base = _base_url(parts)
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
                f"Invalid job {_shown(job)}: give the job's page URL ({_EXAMPLE}) "
                "or user/project/job_id"
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
    def project_url(self) -> str:
        """The job's project's Overview page in the CML web UI."""
        return f"{self._base()}/{self.username}/{self.project}"

    @property
    def start_url(self) -> str:
        """The v1 start call."""
        return f"{self._base()}/api/v1/projects/{self.path}/start"

    def _base(self) -> str:
        if self.host is None:
            raise CMLInputError(f"No CML host for job {self.slug}")
        return self.host


def normalize_base_url(url: str, *, what: str = "CML host") -> str:
    """`scheme://host[:port]`, lower-cased, from a base URL with no path but `/`, no query,
    no user info. Anything else is refused, never repaired: a guess could send the key to
    a host the user did not mean."""
    parts = _split_url(url, what)
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.strip().endswith("?"):
        raise CMLInputError(
            f"Invalid {what} {_shown(url)}: expected only http(s)://host[:port], "
            "without a path or query"
        )
    return _base_url(parts)


def _split_url(url: str, what: str) -> SplitResult:
    """An http(s) URL with a valid host and port, or a `CMLInputError` that never shows the
    URL's user info (it would carry a password into logs)."""
    if not isinstance(url, str):
        raise CMLInputError(f"Invalid {what}: expected a URL, not {type(url).__name__}")
    text = url.strip()
    if len(text) > _MAX_URL:
        raise CMLInputError(f"Invalid {what}: longer than {_MAX_URL} characters")
    if has_unsafe(text) or any(char.isspace() and char != " " for char in text):
        # Never "repaired" (urlsplit drops tabs and newlines): refused. A plain space is
        # refused by the host or path check that meets it, with a more precise message.
        raise CMLInputError(
            f"Invalid {what} {_shown(text)}: it contains a line break, tab or control character"
        )
    if "@" in _netloc(text):
        raise CMLInputError(
            f"Invalid {what} {_shown(text)}: user:password in the URL is not allowed "
            "(credentials inside a URL would leak into logs); put the key in CML_API_KEY"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise CMLInputError(f"Invalid {what} {_shown(text)}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise CMLInputError(f"Invalid {what} {_shown(text)}: expected http(s)://host")
    if not _valid_host(parts.hostname) or port == 0:
        raise CMLInputError(f"Invalid {what} {_shown(text)}: not a valid host name or port")
    return parts


def _base_url(parts: SplitResult) -> str:
    assert parts.hostname is not None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    port = parts.port
    if port == _DEFAULT_PORTS[scheme]:
        port = None  # https://h:443 is https://h: one origin, one spelling
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _valid_host(host: str) -> bool:
    """A DNS name (labels of letters, digits, '-', '_') or an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


def _netloc(text: str) -> str:
    """The authority part of a URL-ish text (user info, host, port), without parsing it."""
    rest = text.partition("://")[2] if "://" in text else text
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _shown(text: str) -> str:
    """A URL (or any input) as it may be shown: user info replaced, controls escaped, cut."""
    netloc = _netloc(text)
    if "@" in netloc:
        text = text.replace(netloc, "***@" + netloc.rpartition("@")[2], 1)
    shown = printable(text)
    return "'" + (shown if len(shown) <= 200 else shown[:200] + "...") + "'"


def is_loopback(base_url: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1: plain http cannot leak off the machine."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
