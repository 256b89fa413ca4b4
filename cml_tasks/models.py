"""What the client returns: small, typed, serializable (and free of secrets) for Prefect results."""

from __future__ import annotations

import json
import re
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cml_tasks.job import JobRef
from cml_tasks.run_status import RunStatus

SERVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""An id CML hands out (engine and run ids, v2 project and job ids), with `fullmatch`.

The documented shapes are narrower (an engine id is 16 lower-case letters and digits, a v2
id `lv1g-4hu5-a359-wagc`); this is a little lenient, but never lets through whitespace,
control characters, a path separator or a huge value, which would end up on a terminal or
in a URL.
"""


class StartedRun(BaseModel):
    """A job run that CML accepted through the v1 start call."""

    model_config = ConfigDict(frozen=True)

    engine_id: str
    job: JobRef
    environment: dict[str, str]
    requested_at: datetime
    """Client clock just before the start request was sent."""

    @property
    def job_url(self) -> str:
        return self.job.page_url


class JobRun(BaseModel):
    """One run of a job as API v2 reports it, tied to the job it was asked about.

    `project_id` and `job_id` are API v2's opaque ids; `job` is the job as the user named it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    job: JobRef
    project_id: str = ""
    job_id: str = ""
    status: RunStatus = RunStatus.UNKNOWN
    created_at: AwareDatetime | None = None
    """CML's clock, with its time zone. A timestamp without one (or not a timestamp at all)
    makes the run unreadable (`CMLProtocolError` when read): a naive time cannot be compared
    with an attempt's, and reconciliation must never adopt a run on a guess."""
    scheduling_at: AwareDatetime | None = None
    starting_at: AwareDatetime | None = None
    running_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    arguments: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    creator: str | None = None
    """The creator's username."""

    @field_validator("id", "project_id", "job_id")
    @classmethod
    def _is_an_id(cls, value: str, info: ValidationInfo) -> str:
        """Only `id` is required; the v2 ids may be left out (empty)."""
        if (value or info.field_name == "id") and not SERVER_ID.fullmatch(value):
            raise ValueError("not an id: expected up to 128 letters, digits, '-', '_' or '.'")
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _decode_environment(cls, value: object) -> object:
        """A response carries the environment as a JSON string; a request as an object."""
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("environment is not a JSON object") from None
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value

    @field_validator("creator", mode="before")
    @classmethod
    def _creator_username(cls, value: object) -> object:
        return value.get("username") if isinstance(value, dict) else value

    @field_validator(
        "created_at", "scheduling_at", "starting_at", "running_at", "finished_at", mode="before"
    )
    @classmethod
    def _timestamp_text(cls, value: object) -> object:
        """Empty is unset; otherwise RFC 3339 text (or a datetime built in-process), never a
        number, which pydantic would take for seconds since 1970: a wrong shape, not a time."""
        if value == "":
            return None
        if value is None or isinstance(value, str | datetime):
            return value
        raise ValueError("not an RFC 3339 timestamp")

    @property
    def page_url(self) -> str:
        """The run's page: `<job page>/runs/<run id>` (our convention; see README)."""
        return f"{self.job.page_url}/runs/{self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class RunPage(BaseModel):
    """One page of `list_runs`; an empty `next_page_token` means the last page."""

    model_config = ConfigDict(frozen=True)

    runs: list[JobRun]
    next_page_token: str = ""
