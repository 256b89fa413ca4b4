"""What the client returns: small, typed, serializable (and free of secrets) for Prefect results."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from cml_tasks.job import JobRef


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
