"""`cml-backfill`: run a CML job once for every window of a date range, each exactly once.

In-process mode (default): one task run per window (`window_task.start_window`), at most
`max_concurrency` in flight, each holding a slot of the project's global concurrency limit
while its start is in flight (kept for the next window: `keeping_slots`). Scale-out mode:
one flow run of the `cml-window-run` deployment per window (`run_deployment`, idempotency key
per window, `timeout=0`), executed by the deployment's workers and bounded by its
concurrency limit.

Either way a second backfill over an overlapping range starts only the windows not started
yet, and a killed backfill resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any
from uuid import UUID

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import FlowRun
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from cml_tasks._stopping import stopping_workers_if_interrupted
from cml_tasks.backfill import (
    MAX_CONCURRENCY,
    Action,
    BackfillPlan,
    BackfillReport,
    PlannedWindow,
    Reprocess,
    WindowOutcome,
    WindowResult,
    WindowStatus,
    check_run_options,
    decide,
    plan_backfill,
    settled_skip,
)
from cml_tasks.errors import BackfillFailed, CMLError, CMLOutcomeUnknown, CMLWaitCancelled
from cml_tasks.job import JobRef
from cml_tasks.prefect._adapter import block_reference
from cml_tasks.prefect.api import tag_current_flow_run
from cml_tasks.prefect.blocks import (
    CredentialsParameter,
    ensure_block_type_registered,
    ui_title,
)
from cml_tasks.prefect.naming import (
    OUTCOME_UNKNOWN_STATE,
    artifact_key,
    job_slug,
    job_tags,
    short_reason,
)
from cml_tasks.prefect.project_limit import (
    DEFAULT_PROJECT_LIMIT,
    ensure_project_limit,
    keeping_slots,
    limit_size,
    resize_hint,
)
from cml_tasks.prefect.records import NOT_SHARED, window_records
from cml_tasks.prefect.tasks import resolve_settings, shared_client
from cml_tasks.prefect.window_task import start_window
from cml_tasks.reconcile import runs_since
from cml_tasks.record_layout import find
from cml_tasks.run_errors import CMLRunError, CMLWaitTimeout
from cml_tasks.settings import CMLSettings
from cml_tasks.window_options import WindowOptions

PROGRESS_SECONDS = 1.0
"""The progress artifact is updated at most this often (each update is a request)."""
Observer = Callable[[WindowOutcome, int, int], None]
"""Told of each finished window: (outcome, windows done, windows in all)."""
_observers: list[Observer] = []
_note_readers: list[Callable[[str], None]] = []


@contextmanager
def observing(observer: Observer, noted: Callable[[str], None] | None = None) -> Iterator[None]:
    """Tell `observer` of every window that backfills in this process finish meanwhile (the
    CLI's progress bar), once more of a window found a duplicate after the last start, and
    `noted` of each note they make (a capped limit, say) as made."""
    _observers.append(observer)
    if noted is not None:
        _note_readers.append(noted)
    try:
        yield
    finally:
        _observers.remove(observer)
        if noted is not None:
            _note_readers.remove(noted)


def _note(notes: list[str], text: str) -> None:
    """A note for the user: logged now, told to the readers, kept for the report."""
    get_run_logger().warning("%s", text)
    notes.append(text)
    for read in _note_readers:
        read(text)


def _flow_run_name() -> str:
    p = flow_run.parameters
    name = f"backfill {job_slug(p.get('job', '?'))} {p.get('start')}..{p.get('end')}"
    return name + (" (dry run)" if p.get("dry_run") else "")


def failed_outcome(planned: PlannedWindow, job: JobRef, error: BaseException) -> WindowOutcome:
    result = WindowResult.ERROR
    run = getattr(error, "run", None)
    if isinstance(error, CMLOutcomeUnknown):
        result = WindowResult.OUTCOME_UNKNOWN
    elif isinstance(error, (CMLRunError, CMLWaitTimeout, CMLWaitCancelled)):
        result = WindowResult.RUN_FAILED
    elif isinstance(error, CMLError):
        result = WindowResult.START_FAILED
    return WindowOutcome.of(
        job,
        planned,
        result,
        error=f"{type(error).__name__}: {error}",
        reason=short_reason(error),
        engine_id=run.id if run is not None else None,
        run_status=run.status.short if run is not None else None,
        run_url=run.page_url if run is not None else None,
    )


def _run_in_process(
    plan: BackfillPlan,
    max_concurrency: int,
    window_arguments: dict[str, Any],
    on_done: Callable[[WindowOutcome], None],
) -> None:
    """Submit one `start_window` task per window (with `window_arguments`), never more than
    `max_concurrency` unfinished at once.

    Followed, a task ends with its CML run, so `max_concurrency` (and the project limit)
    bound active CML runs, not just start calls. The job's records are read at once (one
    paged listing), so a window costs two calls of coordination: its claim and its outcome.
    """
    known = window_records().records(plan.job)
    by_future: dict[PrefectFuture[WindowOutcome], PlannedWindow] = {}

    def collect(future: PrefectFuture[WindowOutcome]) -> None:
        planned = by_future.pop(future)
        value: object
        try:
            value = future.result(raise_on_failure=False)
        except Exception as error:  # the task engine itself failed (e.g. Prefect's tag check
            value = error  # got 503s): one window's error, not the whole backfill's
        if isinstance(value, WindowOutcome):
            on_done(value)
            return
        if not isinstance(value, BaseException):
            value = RuntimeError(future.state.message or "the window's task did not complete")
        on_done(failed_outcome(planned, plan.job, value))

    with stopping_workers_if_interrupted():
        for planned in plan.windows:
            record = find(known, planned.key)
            skipped = settled_skip(
                record, window_arguments["reprocess"], window_arguments["follow"]
            )
            if skipped is not None:  # started already: no task run, no request, only its row
                on_done(WindowOutcome.skipped(plan.job, planned, skipped, record))
                continue
            while len(by_future) >= max_concurrency:
                collect(next(as_completed(list(by_future))))
            with tags(*job_tags(plan.job)):
                future = start_window.submit(
                    job=plan.job,
                    planned=quote(planned),  # no lineage: windows do not feed each other
                    record=quote(record),
                    record_is_current=True,
                    **window_arguments,
                )
            by_future[future] = planned
        for future in as_completed(list(by_future)):
            collect(future)


def _dispatch(
    plan: BackfillPlan,
    *,
    deployment: str,
    reprocess: Reprocess,
    parameters: dict[str, Any],
    on_done: Callable[[WindowOutcome], None],
) -> None:
    """One flow run of `deployment` per window, created with an idempotency key per window.

    The key is the window's record key (`:2`, `:3`... for deliberate re-runs), so the Prefect
    server itself refuses to create a second run for a window, even from two backfills at
    once. Previous runs of a window are found by its tag and decide as the records do.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        for planned in plan.windows:
            tag = f"cml-window:{planned.key.removeprefix('cml-')}"
            previous = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            )
            status, detail = _dispatch_status(previous)
            action, reason = decide(status, reprocess, detail)
            result = WindowResult.SKIPPED
            if action is Action.START:
                attempt = len(previous) + 1
                run: FlowRun = run_deployment(  # type: ignore[assignment]
                    name=deployment,
                    parameters={
                        **parameters,
                        "window_start": planned.window.start,
                        "window_end": planned.window.last_day,
                    },
                    idempotency_key=planned.key if attempt == 1 else f"{planned.key}:{attempt}",
                    flow_run_name=f"{plan.job.slug} {planned.label}",
                    tags=["cml-backfill", tag],
                    timeout=0,
                )
                result, reason = (
                    WindowResult.DISPATCHED,
                    f"flow run {run.name} ({run.id}): {reason}",
                )
            elif action is Action.UNKNOWN:
                result = WindowResult.OUTCOME_UNKNOWN
            on_done(WindowOutcome.of(plan.job, planned, result, reason=reason))


def _dispatch_status(previous: list[FlowRun]) -> tuple[WindowStatus | None, str]:
    """A window's status as its newest flow run tells it, for `decide`."""
    if not previous:
        return None, ""
    last = max(previous, key=lambda run: run.created or 0)
    state = last.state
    if state is None or not (state.is_failed() or state.is_crashed()):
        kind = state.type.value.lower() if state is not None else "unknown"
        return WindowStatus.STARTED, f"dispatched: flow run {last.name} is {kind}"
    if state.name == OUTCOME_UNKNOWN_STATE:
        return WindowStatus.OUTCOME_UNKNOWN, f"flow run {last.name}"
    return WindowStatus.START_FAILED, f"flow run {last.name} failed: {state.message}"


@flow(
    name="cml-backfill",
    flow_run_name=_flow_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
    validate_parameters=True,
)
def cml_backfill(
    job: Annotated[str, ui_title("Job page URL")],
    start: Annotated[date, ui_title("First day")],
    end: Annotated[date, ui_title("Last day")],
    options: Annotated[WindowOptions, ui_title("Window cadence and dates")] = WindowOptions(),
    max_concurrency: Annotated[int, ui_title("Max concurrent starts")] = 4,
    order: Annotated[str, ui_title("Order")] = "oldest",
    reprocess: Annotated[str, ui_title("Reprocess")] = "missing",
    dry_run: Annotated[bool, ui_title("Dry run")] = False,
    follow: Annotated[bool, ui_title("Follow runs to their end")] = False,
    poll_interval: Annotated[float, ui_title("Poll interval (seconds)")] = 30.0,
    max_wait: Annotated[float | None, ui_title("Max wait per run (seconds)")] = None,
    credentials: CredentialsParameter = None,
    project_limit: Annotated[int, ui_title("Project concurrency limit")] = DEFAULT_PROJECT_LIMIT,
    scale_out: Annotated[bool, ui_title("Scale out (one flow run per window)")] = False,
    deployment: Annotated[str, ui_title("Window-run deployment")] = "cml-window-run/monthly",
) -> BackfillReport:
    """Start a CML job once per window of `[start, end]`; skip windows already started.

    Args:
        job: The job's Overview page URL, or `user/project/job_id` with `CML_HOST` set.
        start: First day of the range (its window may begin earlier: windows are aligned).
        end: Last day of the range, inclusive.
        options: Cadence and rendering of the windows, as in the `cml-window-run` flow.
        max_concurrency: At most this many start calls of this backfill in flight (1..64);
            with `follow`, at most this many of its CML runs active.
        order: "oldest" or "newest" first.
        reprocess: "missing" (default: windows not started, or whose start failed),
            "failed" (only windows whose start or followed run failed), "all" (every window
            again).
        dry_run: List the windows and their environment; start nothing.
        follow: Start through API v2 (`CML_API_V2_KEY`) and follow each run to its end,
            holding its concurrency slots meanwhile; windows end `succeeded` or `run_failed`.
        poll_interval: Seconds between polls when following (shared by all windows).
        max_wait: With `follow`, stop a run (and fail its window) after this many seconds.
        credentials: A saved CML Credentials block; default: the `CML_*` variables.
        project_limit: Size of the project's global concurrency limit
            (`cml-project:<user>:<project>`) if this backfill has to create it (at least
            `max_concurrency`); 0 uses no project limit (only `max_concurrency` bounds this
            backfill).
        scale_out: Dispatch one flow run of `deployment` per window instead of tasks here.
        deployment: `flow-name/deployment-name` of a `cml-window-run` deployment (scale-out).
    """
    ensure_block_type_registered(get_run_logger())
    logger = get_run_logger()
    mode = check_run_options(
        max_concurrency=max_concurrency,
        reprocess=reprocess,
        follow=follow,
        scale_out=scale_out,
        poll_interval=poll_interval,
        max_wait=max_wait,
    )
    settings = resolve_settings(credentials)
    if follow and not dry_run:
        settings.require("api_v2_key")
    plan = plan_backfill(JobRef.parse(job).with_host(settings.host), start, end, options, order)
    tag_current_flow_run(job_tags(plan.job))
    logger.info(
        "Backfill of %s: %d windows (%s), reprocess=%s%s",
        plan.job.slug,
        len(plan.windows),
        plan.cadence,
        mode,
        ", following runs to completion" if follow else "",
    )
    notes: list[str] = []
    if not window_records().shared_api:
        _note(notes, NOT_SHARED)
    if settings.api_v2_key is None:
        logger.info(
            "No API v2 key (CML_API_V2_KEY): a window whose start's outcome is unknown is "
            "reported, never started again"
        )
    if dry_run:
        outcomes = [WindowOutcome.of(plan.job, p, WindowResult.PLANNED) for p in plan.windows]
    elif scale_out:
        parameters = {
            "job": plan.job.page_url,
            "options": options.model_dump(),
            "credentials": None if credentials is None else block_reference(credentials),
        }
        outcomes = _collect(
            plan,
            lambda on_done: _dispatch(
                plan, deployment=deployment, reprocess=mode, parameters=parameters, on_done=on_done
            ),
        )
    else:
        limit_name = (
            ensure_project_limit(plan.job, max(project_limit, max_concurrency))
            if project_limit > 0
            else None
        )
        if limit_name is not None and (size := limit_size(limit_name)) < max_concurrency:
            _note(
                notes,
                f"The project limit {limit_name} has {size} slots, fewer than "
                f"max_concurrency={max_concurrency}: at most {size} windows of the project "
                f"start at once. Raise it: {resize_hint(limit_name, max_concurrency)}",
            )
        window_arguments = {
            "reprocess": mode,
            "credentials": settings,
            "project_limit": limit_name,
            "follow": follow,
            "poll_interval": poll_interval,
            "max_wait": max_wait,
        }
        began = datetime.now(UTC)
        with keeping_slots(limit_name):
            outcomes = _collect(
                plan,
                lambda on_done: _run_in_process(plan, max_concurrency, window_arguments, on_done),
            )
        if settings.api_v2_key is not None and mode is not Reprocess.ALL:
            outcomes = _name_duplicates(plan.job, outcomes, settings, began, notes)
    return _report(plan, outcomes, dry_run=dry_run, notes=notes)


_STARTED = {WindowResult.STARTED, WindowResult.SUCCEEDED, WindowResult.RUN_FAILED}


def _started_here(outcome: WindowOutcome) -> bool:
    """The window has a run this backfill started or adopted."""
    return outcome.result in _STARTED and outcome.engine_id is not None


def _name_duplicates(
    job: JobRef,
    outcomes: list[WindowOutcome],
    settings: CMLSettings,
    began: datetime,
    notes: list[str],
) -> list[WindowOutcome]:
    """CML asked once more, after the last start: a window this backfill started of which
    CML shows another run, created since the backfill began, was started by someone else at
    the same moment too (a backfill on another Prefect server, whose records this one cannot
    see): a `duplicate`, with both runs' ids. Of two backfills racing, the one whose start
    came second always sees both (its listing follows its start); the first sees the other's
    run if it was created before its own listing. Not with `--reprocess all`, which starts
    second runs on purpose."""
    if not any(_started_here(o) for o in outcomes):
        return outcomes
    try:
        runs = runs_since(shared_client(settings), job, began)
    except CMLError as error:
        _note(
            notes, f"CML could not be asked for duplicate runs (another Prefect server's): {error}"
        )
        return outcomes
    named = []
    for outcome in outcomes:
        others = [
            run_id
            for run_id in runs.get(frozenset(outcome.environment.items()), [])
            if run_id != outcome.engine_id
        ]
        if _started_here(outcome) and others:
            outcome = outcome.duplicated(others)
            for observer in _observers:
                observer(outcome, len(outcomes), len(outcomes))
        named.append(outcome)
    return named


def _collect(
    plan: BackfillPlan, run: Callable[[Callable[[WindowOutcome], None]], None]
) -> list[WindowOutcome]:
    """Run the windows through `run`, keeping a progress artifact and the observers up to
    date; the outcomes in plan order."""
    total = len(plan.windows)
    progress: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=0.0,
        key=f"{artifact_key('backfill-progress', plan.job)}-{_span(plan)}",
        description=f"0 of {total} windows",
    )
    key_of = {p.label: p.key for p in plan.windows}
    outcomes: dict[str, WindowOutcome] = {}
    counts: Counter[str] = Counter()
    began = time.monotonic()
    shown = [began]

    def on_done(outcome: WindowOutcome) -> None:
        outcomes[key_of[outcome.window]] = outcome
        counts[outcome.shown] += 1
        done = len(outcomes)
        if done == total or time.monotonic() >= shown[0] + PROGRESS_SECONDS:
            shown[0] = time.monotonic()
            update_progress_artifact(
                artifact_id=progress,
                progress=100.0 * done / total,
                description=progress_text(done, total, counts, shown[0] - began),
            )
        for observer in _observers:
            observer(outcome, done, total)

    run(on_done)
    return [outcomes[p.key] for p in plan.windows]


def progress_text(done: int, total: int, counts: Counter[str], seconds: float) -> str:
    """`7 of 12 windows: 5 started, 1 start failed, 1 outcome unknown; 3.5 windows/min, about
    1 min left`: each result in words (failures apart from unknowns), the rate and what is
    left at that rate."""
    told = ", ".join(f"{n} {what}" for what, n in counts.most_common())
    text = f"{done} of {total} windows" + (f": {told}" if told else "")
    if seconds <= 0 or done == 0:
        return text
    rate = done / seconds * 60
    text += f"; {rate:.1f} windows/min"
    if done < total:
        text += f", about {_duration((total - done) / rate * 60)} left"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _span(plan: BackfillPlan) -> str:
    """`2017-01-01-2017-12-31`: the plan's first and last day, for artifact keys."""
    first, last = plan.windows[0].window, plan.windows[-1].window
    return f"{min(first.start, last.start)}-{max(first.last_day, last.last_day)}"


def _report(
    plan: BackfillPlan, outcomes: list[WindowOutcome], *, dry_run: bool, notes: list[str]
) -> BackfillReport:
    """The report, as a markdown artifact and a log line; a Failed state (one line, no
    traceback) listing the failed windows, if any."""
    report = BackfillReport(
        job_url=plan.job.page_url, outcomes=outcomes, dry_run=dry_run, notes=notes
    )
    create_markdown_artifact(
        key=f"{artifact_key('backfill', plan.job)}-{_span(plan)}",
        markdown=report.markdown(f"Backfill of {plan.job.slug}"),
        description=f"Backfill of {plan.job.slug}: {report.summary()}",
    )
    get_run_logger().info("%s", report.summary())
    if report.failures:
        failed = BackfillFailed(
            f"{len(report.failures)} of {len(outcomes)} windows failed:\n{report.failure_text()}"
        )
        return Failed(message=str(failed), data=failed)  # type: ignore[return-value]
    return report
