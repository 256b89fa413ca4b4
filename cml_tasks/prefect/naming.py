"""Names and keys the Prefect UI shows: run names and artifact keys, readable and stable."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef


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
