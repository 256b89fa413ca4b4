"""Pipeline flows: `cml-pipeline-run` (the window a schedule picks) and `cml-pipeline-backfill`
(every window of a date range, `max_concurrency` windows in flight).

A window's steps run in dependency order, independent ones at the same time. Each step is a
`cml-window` task run (`window_task.start_window`, named `train 2017-03`): its record, claim,
CML witness and adoption as for a single job, started through API v2 and followed to its end
while it holds a slot of its project's limit. A step starts only once every `after` step
succeeded for that window; a step after a failed one is "not reached".

Whatever ran before, a step that succeeded is never started again, a running one is followed,
a failed one is started again (then its downstream steps run). `from_step` starts that step
and every step after it again, leaving the steps before it as their records say.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from cml_tasks._stopping import stopping_workers_if_interrupted
from cml_tasks.backfill import (
    MAX_CONCURRENCY,
    Reprocess,
    WindowOutcome,
    WindowRecord,
    WindowStatus,
    check_run_options,
)
from cml_tasks.errors import CMLInputError
from cml_tasks.pipeline import (
    Pipeline,
    PipelineFailed,
    PipelinePlan,
    PipelineReport,
    PipelineRow,
    PipelineWindow,
    RecordsByJob,
    StepCell,
    StepResult,
    grid_size,
    plan_pipeline,
    plan_windows,
    planned_report,
)
from cml_tasks.prefect.api import tag_current_flow_run
from cml_tasks.prefect.backfill import failed_outcome
from cml_tasks.prefect.blocks import (
    CredentialsParameter,
    ensure_block_type_registered,
    ui_title,
)
from cml_tasks.prefect.naming import job_tags, short_reason
from cml_tasks.prefect.project_limit import DEFAULT_PROJECT_LIMIT, ensure_project_limit
from cml_tasks.prefect.records import NOT_SHARED, window_records
from cml_tasks.prefect.tasks import resolve_settings
from cml_tasks.prefect.window_run import scheduled_start
from cml_tasks.prefect.window_task import start_window
from cml_tasks.settings import CMLSettings
from cml_tasks.windows import Window, explicit_window, window_for

FAILED_STATUSES = frozenset(
    {
        WindowStatus.START_FAILED,
        WindowStatus.RUN_FAILED,
        WindowStatus.OUTCOME_UNKNOWN,
        WindowStatus.STARTING,
    }
)
"""A step whose record says one of these makes its window one that `reprocess=failed` runs."""


@dataclass
class _Steps:
    """How each step of the pipeline runs: which to start again, and with what."""

    pipeline: Pipeline
    settings: CMLSettings
    mode: Reprocess
    from_steps: set[str]
    limits: dict[str, str | None]
    poll_interval: float
    max_wait: float | None

    def runs(self, step: str) -> bool:
        """Whether the step has a task run (with `from_step`, the steps before it do not:
        they stay as their records say)."""
        return not self.from_steps or step in self.from_steps

    def again(self, step: str) -> bool:
        """Whether the step starts again whatever its record says."""
        return self.mode is Reprocess.ALL or step in self.from_steps

    def settled(self, step: str, record: WindowRecord | None) -> bool:
        """The step succeeded, as its record (read with the job's others) says: it needs no
        task run (a rerun of a finished range creates none)."""
        return (
            record is not None and record.status is WindowStatus.SUCCEEDED and not self.again(step)
        )

    def submit(self, window: PipelineWindow, name: str) -> PrefectFuture[WindowOutcome]:
        job, planned = window.steps[name]
        step = self.pipeline.step(name)
        again = self.again(name)
        arguments: dict[str, Any] = {
            "job": job,
            "planned": quote(planned),  # no lineage: steps are ordered here
            "reprocess": Reprocess.ALL if again else Reprocess.MISSING,
            "retry_failed": True,
            "step": name,
            "credentials": self.settings,
            "project_limit": self.limits[name],
            "follow": True,
            "poll_interval": self.poll_interval,
            "max_wait": step.max_wait if step.max_wait is not None else self.max_wait,
        }
        task = start_window.with_options(task_run_name=f"{name} {window.label}")
        with tags(*job_tags(job), f"cml-pipeline:{self.pipeline.name}"):
            future: PrefectFuture[WindowOutcome] = task.submit(**arguments)
        return future


@dataclass
class _WindowRun:
    """One window's steps in flight: each step starts once all its `after` steps succeeded."""

    planned: PipelineWindow
    steps: _Steps
    records: dict[str, WindowRecord | None]
    cells: dict[str, StepCell] = field(default_factory=dict)
    running: dict[str, PrefectFuture[WindowOutcome]] = field(default_factory=dict)

    def advance(self) -> None:
        """Submit every step whose `after` steps all succeeded; a step after a failed or
        unreached one is not reached. In dependency order, so one pass settles a chain."""
        for step in self.steps.pipeline.order():
            name = step.name
            if name in self.cells or name in self.running:
                continue
            before = [self.cells.get(b) for b in step.after]
            blocked = [c for c in before if c is not None and c.result is not StepResult.SUCCEEDED]
            if blocked:
                self.cells[name] = self._not_reached(name, blocked[0])
            elif all(c is not None for c in before):
                record = self.records.get(name)
                if self.steps.runs(name) and not self.steps.settled(name, record):
                    self.running[name] = self.steps.submit(self.planned, name)
                else:  # as its record says: no task run, no request
                    self.cells[name] = StepCell.of_record(name, self.planned.steps[name], record)

    def collect(self, name: str, future: PrefectFuture[WindowOutcome]) -> None:
        del self.running[name]
        value: object
        try:
            value = future.result(raise_on_failure=False)
        except Exception as error:  # the task engine itself failed: this step's error
            value = error
        job, planned = self.planned.steps[name]
        if isinstance(value, WindowOutcome):
            self.cells[name] = StepCell.of(name, value)
        else:
            if not isinstance(value, BaseException):
                value = RuntimeError(future.state.message or "the step's task did not complete")
            outcome = failed_outcome(planned, job, value)
            self.cells[name] = StepCell.of(name, outcome, short_reason(value))
        self.advance()

    @property
    def done(self) -> bool:
        return not self.running and len(self.cells) == len(self.planned.steps)

    def row(self) -> PipelineRow:
        return PipelineRow.of(self.planned, self.cells)

    def _not_reached(self, name: str, blocker: StepCell) -> StepCell:
        job, planned = self.planned.steps[name]
        return StepCell(
            step=name,
            result=StepResult.NOT_REACHED,
            job_url=job.page_url,
            environment=planned.environment,
            reason=f"{blocker.step} {blocker.result.value}",
        )


def _run_windows(
    plan: PipelinePlan,
    steps: _Steps,
    windows: Iterable[PipelineWindow],
    max_windows: int,
    records: dict[str, dict[str, WindowRecord]],
    on_row: Callable[[PipelineRow], None],
) -> None:
    """Every window's steps, at most `max_windows` windows in flight; `on_row` as each ends."""
    waiting = deque(windows)
    active: list[_WindowRun] = []
    by_future: dict[PrefectFuture[WindowOutcome], tuple[_WindowRun, str]] = {}

    def admit() -> None:
        while waiting and len(active) < max_windows:
            planned = waiting.popleft()
            run = _WindowRun(planned, steps, planned.records(records))
            run.advance()
            active.append(run)
        for run in [r for r in active if r.done]:
            active.remove(run)
            on_row(run.row())
        by_future.clear()
        for run in active:
            by_future.update({future: (run, name) for name, future in run.running.items()})

    with stopping_workers_if_interrupted():
        admit()
        while active or waiting:
            if not by_future:  # every active window is done: admit more
                admit()
                continue
            future = next(as_completed(list(by_future)))
            run, name = by_future[future]
            run.collect(name, future)
            admit()


def _limits(plan: PipelinePlan, project_limit: int) -> dict[str, str | None]:
    """Each step's project limit (created with `project_limit` slots if missing; 0: none)."""
    if not plan.windows or project_limit <= 0:
        return dict.fromkeys(step.name for step in plan.pipeline.steps)
    first = plan.windows[0].steps
    return {name: ensure_project_limit(job, project_limit) for name, (job, _) in first.items()}


def read_records(plan: PipelinePlan) -> dict[str, dict[str, WindowRecord]]:
    """Every record of the pipeline's jobs, by job page URL and key (one listing per job)."""
    store = window_records()
    return {job.page_url: store.records(job) for job in plan.jobs}


def _wants_rerun(window: PipelineWindow, records: RecordsByJob) -> bool:
    """`reprocess=failed`: a window with a failed (or unknown) step."""
    return any(
        record is not None and record.status in FAILED_STATUSES
        for record in window.records(records).values()
    )


def _execute(
    plan: PipelinePlan,
    *,
    settings: CMLSettings,
    mode: Reprocess,
    from_step: str | None,
    max_concurrency: int,
    poll_interval: float,
    max_wait: float | None,
    project_limit: int,
) -> PipelineReport:
    """Run the plan's windows; the report in plan order."""
    settings.require("api_v2_key")
    pipeline = plan.pipeline
    from_steps = pipeline.downstream(from_step) if from_step else set()
    steps = _Steps(
        pipeline,
        settings,
        mode,
        from_steps,
        _limits(plan, project_limit),
        poll_interval,
        max_wait,
    )
    records = read_records(plan)
    rows: dict[str, PipelineRow] = {}
    chosen = []
    for window in plan.windows:
        if mode is Reprocess.FAILED and not _wants_rerun(window, records):
            rows[window.label] = window.recorded_row(records)
        else:
            chosen.append(window)

    def on_row(row: PipelineRow) -> None:
        rows[row.window] = row
        get_run_logger().info(
            "%s: %s",
            row.window,
            ", ".join(f"{cell.step} {cell.result.value}" for cell in row.cells),
        )

    _run_windows(plan, steps, chosen, max_concurrency, records, on_row)
    return PipelineReport(
        pipeline=pipeline.name,
        steps=[step.name for step in pipeline.order()],
        rows=[rows[window.label] for window in plan.windows],
    )


def _finish(report: PipelineReport, key: str, note: str) -> PipelineReport:
    """The grid as an artifact and a log line; a Failed state (one line) if a step failed."""
    create_markdown_artifact(
        key=key,
        markdown=report.markdown() + (f"\n**Note**: {note}.\n" if note else ""),
        description=f"Pipeline {report.pipeline}: {report.summary()}",
    )
    get_run_logger().info("%s", report.summary())
    if report.failures():
        failed = PipelineFailed(report)
        return Failed(message=str(failed), data=failed)  # type: ignore[return-value]
    return report


def _artifact_key(kind: str, pipeline: Pipeline, first: date, last: date) -> str:
    """`cml-pipeline-risk-monthly-2017-01-01-2017-06-30`: keys allow lower-case letters,
    digits and dashes."""
    slug = "".join(c if c.isalnum() else "-" for c in pipeline.name.lower()).strip("-")
    return f"cml-{kind}-{slug}-{first.isoformat()}-{last.isoformat()}"


def _note() -> str:
    note = "" if window_records().shared_api else NOT_SHARED
    if note:
        get_run_logger().warning("%s", note)
    return note


def _backfill_run_name() -> str:
    p = flow_run.parameters
    pipeline = p.get("pipeline")
    name = getattr(pipeline, "name", None)
    if isinstance(pipeline, dict):
        name = pipeline.get("name")
    text = f"backfill {name} {p.get('start')}..{p.get('end')}"
    return text + (" (dry run)" if p.get("dry_run") else "")


@flow(
    name="cml-pipeline-backfill",
    flow_run_name=_backfill_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
    validate_parameters=True,
)
def cml_pipeline_backfill(
    pipeline: Annotated[Pipeline, ui_title("Pipeline")],
    start: Annotated[date, ui_title("First day")],
    end: Annotated[date, ui_title("Last day")],
    max_concurrency: Annotated[int, ui_title("Max windows in flight")] = 4,
    order: Annotated[str, ui_title("Order")] = "oldest",
    reprocess: Annotated[str, ui_title("Reprocess")] = "missing",
    from_step: Annotated[str | None, ui_title("Start again from step")] = None,
    dry_run: Annotated[bool, ui_title("Dry run")] = False,
    poll_interval: Annotated[float, ui_title("Poll interval (seconds)")] = 30.0,
    max_wait: Annotated[float | None, ui_title("Max wait per run (seconds)")] = None,
    credentials: CredentialsParameter = None,
    project_limit: Annotated[int, ui_title("Project concurrency limit")] = DEFAULT_PROJECT_LIMIT,
) -> PipelineReport:
    """Run a pipeline's steps for every window of `[start, end]`, each (step, window) once.

    Args:
        pipeline: The steps, their order and the windows' cadence and rendering.
        start: First day of the range (its window may begin earlier: windows are aligned).
        end: Last day of the range, inclusive.
        max_concurrency: At most this many windows in flight (1..64).
        order: "oldest" or "newest" first.
        reprocess: "missing" (default: every step that has not succeeded), "failed" (only
            windows with a failed step), "all" (every step of every window again).
        from_step: Start this step and every step after it again; the steps before it stay.
        dry_run: List the windows x steps and their environment; start nothing.
        poll_interval: Seconds between polls of the runs (shared by all steps).
        max_wait: Stop a step's run (and fail it) after this many seconds, unless the step
            sets its own `max_wait`.
        credentials: A saved CML Credentials block; default: the `CML_*` variables.
        project_limit: Size of each project's global concurrency limit if it has to be
            created; 0 uses none.
    """
    ensure_block_type_registered(get_run_logger())
    mode = check_run_options(
        max_concurrency=max_concurrency,
        reprocess=reprocess,
        follow=True,
        scale_out=False,
        poll_interval=poll_interval,
        max_wait=max_wait,
    )
    if from_step is not None:
        pipeline.step(from_step)
    settings = resolve_settings(credentials)
    if not dry_run:
        settings.require("api_v2_key")
    plan = plan_pipeline(pipeline, start, end, settings.host, order)
    if not plan.windows:
        raise CMLInputError(f"no window of {pipeline.options.every} overlaps {start}..{end}")
    first, last = plan.windows[0].window, plan.windows[-1].window
    span = (min(first.start, last.start), max(first.last_day, last.last_day))
    tag_current_flow_run(["cml", f"cml-pipeline:{pipeline.name}"])
    get_run_logger().info(
        "Pipeline %s: %s (%s), reprocess=%s%s",
        pipeline.name,
        grid_size(len(plan.windows), len(pipeline.steps)),
        pipeline.options.cadence,
        mode,
        f", from step {from_step}" if from_step else "",
    )
    if dry_run:
        report = planned_report(plan)
        return _finish(report, _artifact_key("pipeline-backfill", pipeline, *span), "dry run")
    note = _note()
    report = _execute(
        plan,
        settings=settings,
        mode=mode,
        from_step=from_step,
        max_concurrency=max_concurrency,
        poll_interval=poll_interval,
        max_wait=max_wait,
        project_limit=project_limit,
    )
    return _finish(report, _artifact_key("pipeline-backfill", pipeline, *span), note)


def _window_run_name() -> str:
    """`risk-monthly 2017-03`; bad input still names the run (the flow then fails clearly)."""
    parameters = dict(flow_run.parameters)
    try:
        pipeline = Pipeline.model_validate(parameters.get("pipeline"))
        window = _window(pipeline, parameters, scheduled_start())
        return f"{pipeline.name} {window.label}"
    except (ValueError, TypeError, AttributeError):
        return "pipeline (invalid input)"


def _window(pipeline: Pipeline, parameters: dict[str, Any], scheduled: datetime | None) -> Window:
    """The window: explicit `window_start` (and `window_end`), else the scheduled time's."""
    cadence = pipeline.options.cadence
    start, end = parameters.get("window_start"), parameters.get("window_end")
    if start is not None:
        return explicit_window(cadence, start, end)
    if end is not None:
        raise CMLInputError("window_end given without window_start: give both, or neither")
    if scheduled is None:
        raise CMLInputError(
            "no window: give window_start, or run as a flow run whose scheduled start time "
            "picks the window"
        )
    return window_for(scheduled, cadence, lag=parameters.get("lag", 1))


@flow(
    name="cml-pipeline-run",
    flow_run_name=_window_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
    validate_parameters=True,
)
def cml_pipeline_run(
    pipeline: Annotated[Pipeline, ui_title("Pipeline")],
    lag: Annotated[int, ui_title("Windows back (lag)")] = 1,
    window_start: Annotated[date | None, ui_title("Window start (explicit)")] = None,
    window_end: Annotated[date | None, ui_title("Window end (explicit, last day)")] = None,
    from_step: Annotated[str | None, ui_title("Start again from step")] = None,
    poll_interval: Annotated[float, ui_title("Poll interval (seconds)")] = 30.0,
    max_wait: Annotated[float | None, ui_title("Max wait per run (seconds)")] = None,
    credentials: CredentialsParameter = None,
    project_limit: Annotated[int, ui_title("Project concurrency limit")] = DEFAULT_PROJECT_LIMIT,
) -> PipelineReport:
    """Run a pipeline's steps for the window a schedule picks, each step once.

    Args:
        pipeline: The steps, their order and the windows' cadence and rendering.
        lag: 1 = last complete window before the scheduled time, 0 = the one in progress.
        window_start: Explicit window instead of the schedule: its first day.
        window_end: The explicit window's last day (optional).
        from_step: Start this step and every step after it again; the steps before it stay.
        poll_interval: Seconds between polls of the runs.
        max_wait: Stop a step's run (and fail it) after this many seconds, unless the step
            sets its own `max_wait`.
        credentials: A saved CML Credentials block; default: the `CML_*` variables.
        project_limit: Size of each project's global concurrency limit if it has to be
            created; 0 uses none.
    """
    ensure_block_type_registered(get_run_logger())
    check_run_options(
        max_concurrency=1,
        reprocess="missing",
        follow=True,
        scale_out=False,
        poll_interval=poll_interval,
        max_wait=max_wait,
    )
    if from_step is not None:
        pipeline.step(from_step)
    parameters = {"window_start": window_start, "window_end": window_end, "lag": lag}
    window = _window(pipeline, parameters, scheduled_start())
    settings = resolve_settings(credentials)
    settings.require("api_v2_key")
    plan = plan_windows(pipeline, [window], settings.host)
    tag_current_flow_run(["cml", f"cml-pipeline:{pipeline.name}"])
    note = _note()
    report = _execute(
        plan,
        settings=settings,
        mode=Reprocess.MISSING,
        from_step=from_step,
        max_concurrency=1,
        poll_interval=poll_interval,
        max_wait=max_wait,
        project_limit=project_limit,
    )
    return _finish(report, _artifact_key("pipeline", pipeline, window.start, window.last_day), note)
