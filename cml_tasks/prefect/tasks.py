"""Prefect tasks that start CML job runs, named and logged so the Prefect UI reads clearly."""

from __future__ import annotations

from typing import Any

from prefect import State, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed

from cml_tasks._shared import shared
from cml_tasks._stopping import stop_requested
from cml_tasks.client import AsyncCMLClient, CMLClient
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun, StartedRun
from cml_tasks.prefect._adapter import cancel_requested
from cml_tasks.prefect.blocks import CMLCredentials
from cml_tasks.prefect.events import emit_run_event
from cml_tasks.prefect.naming import job_slug, window_text
from cml_tasks.reconcile import async_start_run, start_run
from cml_tasks.run_status import RunStatus
from cml_tasks.settings import CMLSettings
from cml_tasks.waiting import RunPoller, async_wait_for_run, raise_for_status


def resolve_settings(credentials: CMLCredentials | CMLSettings | None) -> CMLSettings:
    """A block or settings as given, else the `CML_*` environment."""
    if isinstance(credentials, CMLCredentials):
        return credentials.settings()
    return credentials if credentials is not None else CMLSettings.load()


@shared
def shared_client(settings: CMLSettings) -> CMLClient:
    """One pooled client per settings, shared by every task run of this process."""
    return CMLClient(settings)


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


# --- Following runs to completion (API v2) ---------------------------------------------------


@shared
def shared_poller(settings: CMLSettings, poll_interval: float) -> RunPoller:
    """One poller per settings and interval: concurrent task runs share their polls."""
    return RunPoller(shared_client(settings), poll_interval=poll_interval)


def final_state(run: JobRun) -> JobRun | State[JobRun]:
    """The Prefect outcome of a terminal run; emits its event and logs it.

    SUCCEEDED -> the run (Completed); SKIPPED -> a Completed state named "Skipped";
    STOPPED -> Cancelled; FAILED, TIMEDOUT -> raises `CMLRunFailed`/`CMLRunTimedOut` (Failed).
    """
    emit_run_event(run)
    if run.status is RunStatus.SUCCEEDED:
        return run
    message = f"CML run {run.id} of {run.job.slug} ended {run.status.short}: {run.page_url}"
    if run.status is RunStatus.SKIPPED:
        return Completed(name="Skipped", message=message, data=run)
    if run.status is RunStatus.STOPPED:
        return Cancelled(message=message, data=run)
    raise_for_status(run)
    raise AssertionError(f"not a terminal status: {run.status}")  # pragma: no cover


def _run_run_name(parameters: dict[str, Any]) -> str:
    label = parameters.get("window") or window_text(parameters.get("environment"))
    return " ".join(part for part in ("run", job_slug(parameters["job"]), label) if part)


def _follow_run_name(parameters: dict[str, Any]) -> str:
    return f"follow {job_slug(parameters['job'])} run {parameters['run_id']}"


def log_started(run: JobRun, window: str | None = None, step: str | None = None) -> None:
    """Log the run's page URL as soon as it exists, and emit its `cml.run.started` event."""
    get_run_logger().info("Started CML run %s of %s: %s", run.id, run.job.slug, run.page_url)
    emit_run_event(run, window, step)


def _log_change(run: JobRun) -> None:
    get_run_logger().info("CML run %s %s: %s", run.id, run.status.words, run.page_url)


@task(name="run-cml-job", task_run_name=_run_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def run_cml_job(
    job: str | JobRef,
    environment: dict[str, str] | None = None,
    arguments: str | None = None,
    credentials: CMLCredentials | CMLSettings | None = None,
    window: str | None = None,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    stop_on_timeout: bool = True,
) -> JobRun:
    """Start a run (API v2) and follow it to the end; the task ends as the run did.

    An "outcome unknown" start is reconciled (never a second run for the same window).
    Concurrent task runs share polls. Cancelling the flow run, or reaching `max_wait`
    seconds (unless `stop_on_timeout=False`), stops the CML run.
    """
    settings = resolve_settings(credentials)
    client = shared_client(settings)
    run = start_run(client, job, environment, arguments)
    log_started(run)
    done = follow_to_end(settings, run, poll_interval, max_wait, stop_on_timeout)
    return final_state(done)  # type: ignore[return-value]


@task(name="follow-cml-run", task_run_name=_follow_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def follow_cml_run(
    job: str | JobRef,
    run_id: str,
    credentials: CMLCredentials | CMLSettings | None = None,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    stop_on_timeout: bool = True,
) -> JobRun:
    """Follow a run started elsewhere (e.g. the engine id of `start_cml_job`) to the end."""
    settings = resolve_settings(credentials)
    run = shared_client(settings).get_run(job, run_id)
    done = follow_to_end(settings, run, poll_interval, max_wait, stop_on_timeout)
    return final_state(done)  # type: ignore[return-value]


def follow_to_end(
    settings: CMLSettings,
    run: JobRun,
    poll_interval: float,
    max_wait: float | None,
    stop_on_timeout: bool = True,
) -> JobRun:
    """Wait through the process's shared poller for the run's terminal state, logging each
    change; cancelling the flow run, an interrupt or `max_wait` stop the CML run."""
    return shared_poller(settings, poll_interval).wait(
        run,
        max_wait=max_wait,
        stop_on_timeout=stop_on_timeout,
        on_change=_log_change,
        should_cancel=_stopping,
    )


def _stopping() -> bool:
    """The flow run is being cancelled, or this process was told to stop (a signal)."""
    return stop_requested() or cancel_requested()


@task(name="run-cml-job", task_run_name=_run_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
async def arun_cml_job(
    job: str | JobRef,
    environment: dict[str, str] | None = None,
    arguments: str | None = None,
    credentials: CMLCredentials | CMLSettings | None = None,
    window: str | None = None,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    stop_on_timeout: bool = True,
) -> JobRun:
    """`run_cml_job` for async flows (one GET per poll; cancelling the task stops the run)."""
    async with AsyncCMLClient(resolve_settings(credentials)) as client:
        run = await async_start_run(client, job, environment, arguments)
        log_started(run)
        done = await async_wait_for_run(
            client,
            run,
            poll_interval=poll_interval,
            max_wait=max_wait,
            stop_on_timeout=stop_on_timeout,
            on_change=_log_change,
            should_cancel=_stopping,
        )
    return final_state(done)  # type: ignore[return-value]
