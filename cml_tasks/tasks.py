"""Prefect tasks that start CML job runs, named and logged so the Prefect UI reads clearly."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cml_tasks.blocks import CMLCredentials
from cml_tasks.client import CMLClient
from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.models import StartedRun
from cml_tasks.settings import CMLSettings


def resolve_settings(credentials: CMLCredentials | CMLSettings | None) -> CMLSettings:
    """A block or settings as given, else the `CML_*` environment."""
    if isinstance(credentials, CMLCredentials):
        return credentials.settings()
    return credentials if credentials is not None else CMLSettings.load()


@functools.lru_cache(maxsize=8)
def shared_client(settings: CMLSettings) -> CMLClient:
    """One pooled client per settings, shared by every task run of this process."""
    return CMLClient(settings)


def window_text(environment: Mapping[str, str] | None) -> str:
    """`2017-01-01..2017-01-31` from START_DATE/END_DATE, or empty."""
    env = environment or {}
    if "START_DATE" in env and "END_DATE" in env:
        return f"{env['START_DATE']}..{env['END_DATE']}"
    return ""


def job_slug(job: object) -> str:
    """`risk-analysis/208`, or the text as given when it does not parse (naming must not fail)."""
    try:
        return JobRef.parse(job).slug  # type: ignore[arg-type]
    except (CMLInputError, AttributeError, TypeError):
        return str(job)


def _start_run_name(parameters: dict[str, Any]) -> str:
    label = parameters.get("window") or window_text(parameters.get("environment"))
    return " ".join(part for part in ("start", job_slug(parameters["job"]), label) if part)


# Prefect's protocol for name callbacks has a classmethod no plain function has.
@task(name="start-cml-job", task_run_name=_start_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def start_cml_job(
    job: str | JobRef,
    environment: dict[str, str] | None = None,
    credentials: CMLCredentials | CMLSettings | None = None,
    window: str | None = None,
) -> StartedRun:
    """Start one run of a CML job (v1 call); returns the engine id and the job page URL.

    Never retried by Prefect on an "outcome unknown" error: the run may exist already.
    `window` only labels the task run (e.g. `2017-01`).
    """
    logger = get_run_logger()
    run = shared_client(resolve_settings(credentials)).start(job, environment)
    logger.info(
        "Started CML job %s: engine %s, job page %s", run.job.slug, run.engine_id, run.job_url
    )
    return run
