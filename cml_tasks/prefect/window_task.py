"""The Prefect task `cml-window`: one window of a job started once (`window_start.WindowStart`)
under a slot of the project's concurrency limit and, with `follow`, followed to its end.

Scheduled window runs and backfills both start windows through this task, so they share each
window's record and the project's limit.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from cml_tasks._shared import shared
from cml_tasks.backfill import (
    PlannedWindow,
    Reprocess,
    WindowOutcome,
    WindowRecord,
    WindowResult,
    WindowStatus,
)
from cml_tasks.errors import CMLError, CMLOutcomeUnknown, CMLWaitCancelled
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.prefect._adapter import drop_empty_tracebacks, tell_when_api_unreachable
from cml_tasks.prefect.blocks import CMLCredentials
from cml_tasks.prefect.events import emit_run_event, emit_started, emit_window_failed
from cml_tasks.prefect.naming import OUTCOME_UNKNOWN_STATE, short_reason
from cml_tasks.prefect.project_limit import project_slot
from cml_tasks.prefect.records import window_records
from cml_tasks.prefect.tasks import follow_to_end, log_started, resolve_settings, shared_client
from cml_tasks.reconcile import RunIndex
from cml_tasks.run_errors import CMLRunError, CMLWaitTimeout
from cml_tasks.run_status import RunStatus
from cml_tasks.settings import CMLSettings
from cml_tasks.waiting import raise_for_status
from cml_tasks.window_start import WindowStart

drop_empty_tracebacks()
tell_when_api_unreachable()


@shared
def run_index(settings: CMLSettings, job: JobRef, flow_run_id: str) -> RunIndex:
    """One listing of the job's runs per flow run (a backfill's windows share it)."""
    return RunIndex(shared_client(settings), job)


def _run_name(parameters: dict[str, Any]) -> str:
    planned = parameters.get("planned")
    job = parameters.get("job")
    label = planned.label if isinstance(planned, PlannedWindow) else "?"
    slug = job.slug if isinstance(job, JobRef) else str(job)
    return f"{slug} {label}"


# Prefect's protocol for name callbacks has a classmethod no plain function has.
@task(name="cml-window", task_run_name=_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def start_window(
    job: JobRef,
    planned: PlannedWindow,
    reprocess: Reprocess = Reprocess.MISSING,
    credentials: CMLCredentials | CMLSettings | None = None,
    project_limit: str | None = None,
    follow: bool = False,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    record: WindowRecord | None = None,
    record_is_current: bool = False,
    retry_failed: bool = False,
    step: str | None = None,
) -> WindowOutcome:
    """Start the job for one window unless its record says not to; record what happened.

    Ends Failed (a short reason, no traceback: these are CML's outcomes, not bugs) when the
    start failed (recorded `start_failed`, retried by the next `missing` backfill) or when a
    run may exist and CML cannot be asked (`CMLOutcomeUnknown`: no API v2 key, or v2
    unreachable; never retried blindly). The state's data is the `CMLError`.

    `record`, with `record_is_current=True`, is the window's record as just read (None: it
    has none), so the task need not read it again. `retry_failed`: a failed run is started
    again under `missing` too (a pipeline's step). `step`: the pipeline step's name, put in
    its events.

    `project_limit` names a global concurrency limit held while the start is in flight and,
    with `follow=True`, until the CML run ends. Followed windows end `succeeded` (returned) or
    `run_failed` (recorded, and Failed with the run's `CMLRunError`/`CMLWaitTimeout`).
    """
    settings = resolve_settings(credentials)
    can_reconcile = settings.api_v2_key is not None
    window = WindowStart(
        job=job,
        planned=planned,
        records=window_records(),
        log=get_run_logger(),
        reprocess=reprocess,
        follow=follow,
        can_reconcile=can_reconcile,
        witness=run_index(settings, job, str(flow_run.id)).find if can_reconcile else None,
        seen=record,
        seen_is_current=record_is_current,
        retry_failed=retry_failed,
    )
    try:
        done = window.check()
        if done is not None:
            return done
        with project_slot(project_limit, window.log, f"{job.slug} {planned.label}"):
            started = window.start(shared_client(settings))
            if isinstance(started, WindowOutcome):
                if started.result is WindowResult.STARTED and started.engine_id:
                    how = "adopted" if started.adopted else "started"
                    emit_started(
                        job, planned.label, started.engine_id, started.run_url or "", how, step
                    )
                return started
            log_started(started, planned.label, step)
            return _follow(window, started, settings, poll_interval, max_wait, step)
    except (CMLRunError, CMLWaitTimeout, CMLWaitCancelled) as error:
        return _failed(planned, error)  # the run's own event was emitted
    except CMLError as error:
        unknown = isinstance(error, CMLOutcomeUnknown)
        emit_window_failed(
            job, planned.label, unknown=unknown, reason=short_reason(error), step=step
        )
        return _failed(planned, error)


def _failed(planned: PlannedWindow, error: CMLError) -> WindowOutcome:
    """A Failed state with a short reason (a state is what the task returns; Prefect then
    logs one line, not a traceback), named `Outcome unknown` when a run may exist."""
    name = OUTCOME_UNKNOWN_STATE if isinstance(error, CMLOutcomeUnknown) else "Failed"
    state: WindowOutcome = Failed(  # type: ignore[assignment]
        name=name, message=f"{planned.label}: {short_reason(error)}", data=error
    )
    return state


def _follow(
    window: WindowStart,
    run: JobRun,
    settings: CMLSettings,
    poll_interval: float,
    max_wait: float | None,
    step: str | None,
) -> WindowOutcome:
    """Wait (holding the caller's slot) for the run to end; record and return/raise its end.

    A transient poll failure never fails the window. Only a definite end is recorded: a poll
    error that is not transient leaves the record `started` (a rerun with follow picks the
    run up again).
    """
    fields: dict[str, Any] = {"engine_id": run.id, "run_url": run.page_url}
    try:
        done = follow_to_end(settings, run, poll_interval, max_wait)
    except CMLWaitTimeout as error:
        window.finish(
            WindowStatus.RUN_FAILED, error=str(error), run_status=error.run.status.short, **fields
        )
        raise
    except CMLWaitCancelled as error:
        window.finish(WindowStatus.RUN_FAILED, error=str(error), run_status="stopped", **fields)
        raise
    emit_run_event(done, window.planned.label, step)
    status = done.status.short
    if done.status is RunStatus.SUCCEEDED:
        window.finish(WindowStatus.SUCCEEDED, run_status=status, **fields)
        return WindowOutcome.of(
            window.job, window.planned, WindowResult.SUCCEEDED, run_status=status, **fields
        )
    try:
        raise_for_status(done)
    except CMLRunError as error:
        window.finish(WindowStatus.RUN_FAILED, error=str(error), run_status=status, **fields)
        raise
    raise AssertionError(f"not a terminal status: {done.status}")  # pragma: no cover
