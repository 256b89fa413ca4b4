"""Errors that carry the CML run they are about: a followed run that ended without
succeeding, and a wait that gave up on one.

Apart from `errors.py` so that the base of the hierarchy imports nothing of this package (the
run model sits above it); the run is imported for type checking only, so raising or catching
these loads no pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_tasks.errors import CMLError

if TYPE_CHECKING:
    from cml_tasks.models import JobRun


class CMLRunError(CMLError):
    """A followed run ended without succeeding; carries the run (status, times, page URL)."""

    def __init__(self, message: str, *, run: JobRun) -> None:
        self.run = run
        super().__init__(
            f"{message}: run {run.id} of {run.job.slug} ended {run.status.short} "
            f"(run page: {run.page_url})",
            job_url=run.job.page_url,
        )


class CMLRunFailed(CMLRunError):
    """The run ended FAILED: the job's script raised or exited non-zero."""


class CMLRunTimedOut(CMLRunError):
    """The run ended TIMEDOUT: CML killed it at the job's own timeout."""


class CMLRunStopped(CMLRunError):
    """The run ended STOPPED: someone (or this package, on cancel or timeout) stopped it."""


class CMLRunSkipped(CMLRunError):
    """The run ended SKIPPED: CML did not run it (e.g. another run of the job was active)."""


class CMLWaitTimeout(CMLError):
    """Our maximum wait passed before the run ended; `stopped` says whether we stopped it."""

    def __init__(self, message: str, *, run: JobRun, stopped: bool) -> None:
        self.run = run
        self.stopped = stopped
        super().__init__(message, job_url=run.job.page_url)
