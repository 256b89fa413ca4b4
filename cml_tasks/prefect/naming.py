"""Names, keys and short texts the Prefect UI shows: run names, artifact keys, tags, the
short reason of a failure."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cml_tasks._text import shortened
from cml_tasks.backfill import job_tag
from cml_tasks.errors import CMLError, CMLHTTPError, CMLInputError, CMLOutcomeUnknown
from cml_tasks.job import JobRef
from cml_tasks.run_errors import CMLRunError, CMLWaitTimeout

OUTCOME_UNKNOWN_STATE = "Outcome unknown"
"""The name of a Failed state (a window's task run, a window run) when a run may exist: the
UI's lists and filters tell it from a failure, and scale-out dispatch reads it (a state name
is public; an error message is not an interface)."""


REASON_CHARS = 120
"""A short reason is cut to this length."""


def job_slug(job: object) -> str:
    """`risk-analysis/208`, or the text as given when it does not parse (naming must not fail)."""
    try:
        return JobRef.parse(job).slug  # type: ignore[arg-type]
    except (CMLInputError, AttributeError, TypeError):
        return str(job)


def window_text(environment: Mapping[str, str] | None) -> str:
    """`2017-01-01..2017-01-31` from START_DATE/END_DATE, or empty."""
    env = environment or {}
    if "START_DATE" in env and "END_DATE" in env:
        return f"{env['START_DATE']}..{env['END_DATE']}"
    return ""


def artifact_key(kind: str, job: JobRef) -> str:
    """`cml-<kind>-risk-analysis-208`: one key per job, so the UI lists each job's artifacts
    as versions of one (keys allow lower-case letters, digits and dashes only)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{job.project}-{job.job_id}".lower()).strip("-")
    return f"cml-{kind}-{slug}"


def job_tags(job: JobRef) -> list[str]:
    """`cml`, `cml-project:risk-analysis`, `cml-job:risk-analysis/208`: filters for the UI's
    lists of flow and task runs (the job's tag is its window records' too)."""
    return ["cml", f"cml-project:{job.project}", job_tag(job)]


def short_reason(error: BaseException) -> str:
    """What went wrong in a few words, for a table cell or a state message: the CML status,
    the HTTP status and CML's message, or the first clause of the error (no URLs)."""
    if isinstance(error, CMLRunError):
        return f"CML run {error.run.status.words}"
    if isinstance(error, CMLWaitTimeout):
        stopped = ": stopped it" if error.stopped else ""
        return f"still {error.run.status.words} at the maximum wait{stopped}"
    if isinstance(error, CMLHTTPError):
        said = f": {error.server_message}" if error.server_message else ""
        return shortened(f"HTTP {error.status_code}{said}", REASON_CHARS)
    text = str(error)
    if isinstance(error, CMLError) and error.job_url:
        text = text.replace(f" (job: {error.job_url})", "")
    text = re.sub(r"\s*\(?https?://\S+\)?", "", text.splitlines()[0] if text else "")
    prefix = "outcome unknown: " if isinstance(error, CMLOutcomeUnknown) else ""
    return shortened(prefix + text.removeprefix(prefix), REASON_CHARS)
