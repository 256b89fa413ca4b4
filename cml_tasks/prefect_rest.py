"""A job's window records read straight from the Prefect REST API, without importing Prefect
(which costs 1.4 s): a rerun whose every window is settled is answered from them alone.

Only when the API is certain: `PREFECT_API_URL` in the environment (it beats every other
source of Prefect's settings), or in the active profile when no settings file in the working
directory (`.env`, `prefect.toml`, `pyproject.toml`'s `[tool.prefect]`) could override it.
Settings this reader does not follow (TLS, custom headers) send callers to Prefect itself.
"""

from __future__ import annotations

import base64
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cml_tasks.backfill import WindowRecord
from cml_tasks.job import JobRef
from cml_tasks.record_layout import listed_records, listing_tags, tagged

FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""`PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE` for a server this library starts: leases in
files under its `PREFECT_HOME`, so a restarted server still knows who holds a project slot
(Prefect's default keeps them in memory)."""

_NOT_FOLLOWED = (
    "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
    "PREFECT_API_SSL_CERT_FILE",
    "PREFECT_API_ENABLE_HTTP2",
    "PREFECT_CLIENT_CUSTOM_HEADERS",
)
"""Settings that change how Prefect's client talks to its API: with one set, ask Prefect."""
_SETTINGS_FILES = (".env", "prefect.toml")
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PrefectAPI:
    """Where the Prefect API is and how to authenticate to it."""

    url: str
    headers: dict[str, str] = field(repr=False)  # an API key or auth string: never printed


def prefect_api_from_settings(
    environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> PrefectAPI | None:
    """The API Prefect would use here, or None when that is not certain without Prefect."""
    settings = {name: value for name, value in environ.items() if name.startswith("PREFECT_")}
    if "PREFECT_API_URL" not in settings:
        if _local_settings_files(cwd or Path.cwd()):
            return None
        settings = _active_profile(environ) | settings
    url = settings.get("PREFECT_API_URL")
    if not url or any(settings.get(name) for name in _NOT_FOLLOWED):
        return None
    headers = {}
    if key := settings.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    elif auth := settings.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
    return PrefectAPI(url=url.rstrip("/"), headers=headers)


def _local_settings_files(cwd: Path) -> bool:
    if any((cwd / name).exists() for name in _SETTINGS_FILES):
        return True
    pyproject = cwd / "pyproject.toml"
    return pyproject.is_file() and "[tool.prefect" in pyproject.read_text(errors="replace")


def _active_profile(environ: Mapping[str, str]) -> dict[str, str]:
    """The active profile's settings (Prefect's `profiles.toml`), or none."""
    path = environ.get("PREFECT_PROFILES_PATH")
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    try:
        data = tomllib.loads(Path(path or home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    name = environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(name, {})
    return {k: str(v) for k, v in profile.items()} if isinstance(profile, dict) else {}


def job_records(api: PrefectAPI, job: JobRef, *, at_least: int) -> dict[str, WindowRecord] | None:
    """`job`'s records by key (`record_layout.job_records`), or None when the job has fewer
    than `at_least` variables (they cannot cover that many windows: a count, not the listing).
    Raises `httpx.HTTPError` or a `ValueError` for an answer it cannot read."""
    with httpx.Client(base_url=api.url, headers=api.headers, timeout=TIMEOUT_SECONDS) as http:
        count = 0
        for tag in listing_tags(job):
            counted = _json(http.post("/variables/count", json=tagged(tag)))
            if not isinstance(counted, int):
                raise ValueError(f"/variables/count answered {type(counted).__name__}")
            count += counted
        if count < at_least:
            return None

        def page(tag: str, offset: int, limit: int) -> list[dict[str, Any]]:
            body = tagged(tag) | {"offset": offset, "limit": limit}
            found = _json(http.post("/variables/filter", json=body))
            if not isinstance(found, list):
                raise ValueError(f"/variables/filter answered {type(found).__name__}, not a list")
            return found

        return listed_records(job, page)


def _json(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()
