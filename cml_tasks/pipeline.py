"""Pipelines: several CML jobs per date window, in dependency order, each (step, window) once.

A `Pipeline` names its steps and their `after` steps (a DAG), and the windows' cadence and
rendering (`WindowOptions`). It is checked whole when built - unknown `after` names, cycles,
duplicate names, two steps with the same job and environment - so a bad pipeline is one
`CMLInputError` before anything is sent. The same model is a Python object, a YAML file
(`Pipeline.load`) and a Prefect deployment parameter.

A step's identity is its job, the window and its extra environment: its record key is the
plain job's (`backfill.window_key`) when it has no extra environment, so a pipeline step and a
plain backfill or schedule of the same job and window share one record and one run.

No Prefect here: `cml_tasks.prefect.pipeline` runs the plan.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cml_tasks._text import columns, markdown_text, printable
from cml_tasks.backfill import (
    Order,
    PlannedWindow,
    WindowOutcome,
    WindowRecord,
    WindowResult,
    WindowStatus,
    window_key,
)
from cml_tasks.environment import validate_environment
from cml_tasks.errors import BackfillFailed, CMLError, CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.record_layout import find
from cml_tasks.window_options import WindowOptions
from cml_tasks.windows import Window, windows_between

__all__ = [
    "Pipeline",
    "PipelineFailed",
    "PipelinePlan",
    "PipelineReport",
    "PipelineRow",
    "PipelineWindow",
    "Step",
    "StepCell",
    "StepResult",
    "plan_pipeline",
    "planned_report",
    "recorded_report",
]

STEP_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A step's name: shown in task run names, the grid's columns and `--from-step`."""
MAX_STEPS = 50
"""A pipeline's steps at the most (a grid a person reads)."""
MAX_FILE_BYTES = 256 * 1024
"""A pipeline file's size at the most."""


class Step(BaseModel):
    """One CML job of a pipeline: it starts, for a window, once all its `after` steps
    succeeded for that window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=STEP_NAME, description="The step's name, unique in its pipeline.")
    job: str = Field(description="The job's Overview page URL (or `user/project/job_id`).")
    after: tuple[str, ...] = Field(default=(), description="Steps that must succeed first.")
    environment: dict[str, str] = Field(
        default_factory=dict, description="Extra variables of this step's runs."
    )
    max_wait: float | None = Field(
        default=None, description="Stop the step's run (and fail the step) after this many s."
    )

    def __init__(self, name: str | None = None, job: str | None = None, /, **fields: Any) -> None:
        """`Step("train", url, after=["ingest"])` (or by keyword, as validation from a file
        does); a bad step raises one `CMLInputError`."""
        given = {"name": name, "job": job}
        fields |= {key: value for key, value in given.items() if value is not None}
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise CMLInputError(_problems(str(fields.get("name", "?")), exc, "step")) from None

    @model_validator(mode="after")
    def _checked(self) -> Step:
        try:
            _ = self.job_ref
            validate_environment(self.environment)
        except CMLError as error:
            raise ValueError(str(error)) from None
        if self.max_wait is not None and not 0 < self.max_wait < math.inf:
            raise ValueError(f"max_wait must be a positive number of seconds, got {self.max_wait}")
        return self

    @property
    def job_ref(self) -> JobRef:
        return JobRef.parse(self.job)


class Pipeline(BaseModel):
    """Steps run per date window in dependency order; independent steps at the same time."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Pipeline")

    name: str = Field(pattern=STEP_NAME, description="The pipeline's name (flow run names).")
    options: WindowOptions = Field(
        default_factory=WindowOptions, description="Cadence and rendering of the windows."
    )
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)

    def __init__(self, name: str | None = None, /, **fields: Any) -> None:
        """`Pipeline("risk-monthly", options=..., steps=[...])` (or by keyword, as validation
        from a file does); a bad pipeline raises one `CMLInputError` naming every problem."""
        if name is not None:
            fields["name"] = name
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise CMLInputError(_problems(str(fields.get("name", "?")), exc)) from None

    @model_validator(mode="after")
    def _a_dag(self) -> Pipeline:
        names = [step.name for step in self.steps]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"two steps are named {name!r}")
            seen.add(name)
        for step in self.steps:
            for before in step.after:
                if before not in seen:
                    raise ValueError(f"step {step.name!r}: after names no step {before!r}")
                if before == step.name:
                    raise ValueError(f"step {step.name!r} comes after itself")
        identities: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        for step in self.steps:
            ref = step.job_ref
            identity = (ref.path if ref.host is None else ref.page_url, _sorted(step.environment))
            if identity in identities:
                raise ValueError(
                    f"steps {identities[identity]!r} and {step.name!r} run the same job with the "
                    "same environment: one would find the other's run; give them different "
                    "environments or keep one"
                )
            identities[identity] = step.name
        rendered = {self.options.start_var, self.options.end_var}
        for step in self.steps:
            clash = rendered & step.environment.keys()
            if clash:
                raise ValueError(
                    f"step {step.name!r}: environment sets {', '.join(sorted(clash))}, which "
                    "the window's dates set"
                )
        self.order()  # raises on a cycle
        return self

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        """A pipeline from a YAML (or JSON) file; any problem is one `CMLInputError`."""
        import yaml

        file = Path(path)
        try:
            if not file.is_file():
                raise CMLInputError(f"Pipeline file {file} is not a readable regular file")
            if file.stat().st_size > MAX_FILE_BYTES:
                raise CMLInputError(f"Pipeline file {file} is over {MAX_FILE_BYTES} bytes")
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CMLInputError(
                f"Cannot read pipeline file {file}: {printable(str(exc))[:300]}"
            ) from None
        if not isinstance(data, Mapping):
            raise CMLInputError(
                f"Pipeline file {file}: expected a mapping with name, options and steps"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CMLInputError(f"{file}: {_problems(str(data.get('name', '?')), exc)}") from None
        except CMLInputError as error:  # a step's own check
            raise CMLInputError(f"{file}: {error}") from None

    def step(self, name: str) -> Step:
        """The step named `name`, or a CMLInputError naming the steps there are."""
        for step in self.steps:
            if step.name == name:
                return step
        raise CMLInputError(
            f"Pipeline {self.name} has no step {printable(repr(name))[:80]}: its steps are "
            + ", ".join(step.name for step in self.steps)
        )

    def order(self) -> list[Step]:
        """The steps in a dependency order (each after its `after` steps), stable by
        position; a cycle raises ValueError naming its steps."""
        placed: list[Step] = []
        done: set[str] = set()
        waiting = list(self.steps)
        while waiting:
            ready = [step for step in waiting if set(step.after) <= done]
            if not ready:
                cycle = ", ".join(step.name for step in waiting)
                raise ValueError(f"the steps {cycle} wait for each other (a cycle)")
            for step in ready:
                placed.append(step)
                done.add(step.name)
                waiting.remove(step)
        return placed

    def downstream(self, name: str) -> set[str]:
        """`name` and every step that comes after it, directly or through others."""
        self.step(name)
        found = {name}
        for step in self.order():
            if found & set(step.after):
                found.add(step.name)
        return found


def _sorted(environment: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(environment.items()))


def _problems(name: str, exc: ValidationError, what: str = "pipeline") -> str:
    """One line per problem: `Invalid pipeline 'risk': steps[1].after: ...`."""
    lines = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return f"Invalid {what} {printable(repr(name))[:80]}: " + "; ".join(lines)


class StepResult(StrEnum):
    """A cell of the window x step grid."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RUNNING = "running"
    NOT_REACHED = "not reached"
    OUTCOME_UNKNOWN = "outcome unknown"
    PLANNED = "planned"
    """Dry run: nothing was asked."""


PipelineStep = tuple[JobRef, PlannedWindow]
"""A step's job (host resolved) and its planned window (record key, environment)."""
RecordsByJob = Mapping[str, Mapping[str, WindowRecord]]
"""Window records as read per job: by job page URL, then by record key
(`record_layout.job_records`)."""


class PipelineWindow(BaseModel):
    """One window of a pipeline: each step's job and planned window (record key and
    environment)."""

    model_config = ConfigDict(frozen=True)

    window: Window
    steps: dict[str, PipelineStep]

    @property
    def label(self) -> str:
        return self.window.label

    def records(self, known: RecordsByJob) -> dict[str, WindowRecord | None]:
        """Each step's record in `known` (by job, then record key); None: it has none."""
        return {
            name: find(known.get(job.page_url, {}), planned.key)
            for name, (job, planned) in self.steps.items()
        }

    def recorded_row(self, known: RecordsByJob) -> PipelineRow:
        """The window's row as its steps' records in `known` tell it."""
        records = self.records(known)
        return PipelineRow.of(
            self,
            {
                name: StepCell.of_record(name, step, records[name])
                for name, step in self.steps.items()
            },
        )


class PipelinePlan(BaseModel):
    """Everything decided before any request: the pipeline and its ordered windows."""

    model_config = ConfigDict(frozen=True)

    pipeline: Pipeline
    windows: list[PipelineWindow]

    @property
    def jobs(self) -> list[JobRef]:
        """The pipeline's jobs, once each (every window has the same jobs)."""
        first = self.windows[0].steps.values() if self.windows else []
        return list({job.page_url: job for job, _ in first}.values())


def step_window(pipeline: Pipeline, step: Step, window: Window, host: str | None) -> PipelineStep:
    """`step`'s job (host resolved) and its planned `window`: the key and environment."""
    job = step.job_ref.with_host(host)
    environment = pipeline.options.rendering.environment(window) | step.environment
    key = window_key(job, window, step.environment)
    return job, PlannedWindow(window=window, key=key, environment=environment)


def plan_windows(pipeline: Pipeline, windows: Iterable[Window], host: str | None) -> PipelinePlan:
    """The plan of `windows`, every step of each."""
    return PipelinePlan(
        pipeline=pipeline,
        windows=[
            PipelineWindow(
                window=window,
                steps={s.name: step_window(pipeline, s, window, host) for s in pipeline.order()},
            )
            for window in windows
        ],
    )


def plan_pipeline(
    pipeline: Pipeline,
    start: date,
    end: date,
    host: str | None = None,
    order: Order | str = Order.OLDEST,
) -> PipelinePlan:
    """The windows of `pipeline` overlapping `[start, end]` (inclusive) in `order`, each with
    its steps; raises CMLInputError."""
    try:
        order = Order(order)
    except ValueError:
        raise CMLInputError(f"invalid order {order!r}: use 'oldest' or 'newest'") from None
    pipeline.options.check()
    windows = windows_between(start, end, pipeline.options.cadence)
    if order is Order.NEWEST:
        windows.reverse()
    return plan_windows(pipeline, windows, host)


class StepCell(BaseModel):
    """One (window, step) of a pipeline's grid: what happened, and the CML run's page."""

    model_config = ConfigDict(frozen=True)

    step: str
    result: StepResult
    job_url: str
    environment: dict[str, str]
    engine_id: str | None = None
    run_url: str | None = None
    run_status: str | None = None
    """The CML status the run ended with, once it ended."""
    reason: str | None = None
    """Why it failed or was not reached, in a few words."""

    @property
    def failed(self) -> bool:
        return self.result in (StepResult.FAILED, StepResult.OUTCOME_UNKNOWN)

    @classmethod
    def of(cls, step: str, outcome: WindowOutcome, short: str | None = None) -> StepCell:
        """The cell of a step's `WindowOutcome` (`short`: the failure in a few words)."""
        result = _CELL_OF.get(outcome.result, StepResult.FAILED)
        return cls(
            step=step,
            result=result,
            job_url=outcome.job_url,
            environment=outcome.environment,
            engine_id=outcome.engine_id,
            run_url=outcome.run_url,
            run_status=outcome.run_status,
            reason=short or outcome.reason if result is not StepResult.SUCCEEDED else None,
        )

    @classmethod
    def of_record(cls, step: str, planned: PipelineStep, record: WindowRecord | None) -> StepCell:
        """The cell as a step's record tells it (`cml-jobs records --pipeline`)."""
        job, window = planned
        fields: dict[str, Any] = {"step": step, "job_url": job.page_url}
        fields["environment"] = window.environment
        if record is None:
            return cls(result=StepResult.NOT_REACHED, reason="no record", **fields)
        result = _CELL_OF_STATUS[record.status]
        if record.status is WindowStatus.STARTING and not record.held_by_another("", _now()):
            result = StepResult.OUTCOME_UNKNOWN  # its holder died mid-start
        reason = None
        if result is not StepResult.SUCCEEDED:
            reason = (record.error or record.status.replace("_", " "))[:120]
        return cls(
            result=result,
            engine_id=record.engine_id,
            run_url=record.run_url,
            run_status=record.run_status,
            reason=reason,
            **fields,
        )


_CELL_OF = {
    WindowResult.PLANNED: StepResult.PLANNED,
    WindowResult.SKIPPED: StepResult.SUCCEEDED,  # a step is skipped only once it succeeded
    WindowResult.STARTED: StepResult.RUNNING,
    WindowResult.SUCCEEDED: StepResult.SUCCEEDED,
    WindowResult.OUTCOME_UNKNOWN: StepResult.OUTCOME_UNKNOWN,
}
_CELL_OF_STATUS = {
    WindowStatus.STARTING: StepResult.RUNNING,
    WindowStatus.STARTED: StepResult.RUNNING,
    WindowStatus.SUCCEEDED: StepResult.SUCCEEDED,
    WindowStatus.START_FAILED: StepResult.FAILED,
    WindowStatus.RUN_FAILED: StepResult.FAILED,
    WindowStatus.OUTCOME_UNKNOWN: StepResult.OUTCOME_UNKNOWN,
}


def _now() -> datetime:
    return datetime.now(UTC)


class PipelineRow(BaseModel):
    """One window of the grid: its cells in the pipeline's step order."""

    model_config = ConfigDict(frozen=True)

    window: str
    window_start: date
    window_end: date
    cells: list[StepCell]

    @classmethod
    def of(cls, planned: PipelineWindow, cells: Mapping[str, StepCell]) -> PipelineRow:
        return cls(
            window=planned.label,
            window_start=planned.window.start,
            window_end=planned.window.last_day,
            cells=[cells[name] for name in planned.steps],
        )


def counted(number: int, noun: str) -> str:
    """`1 window`, `6 windows`: a count as a person says it."""
    return f"{number} {noun}{'s' * (number != 1)}"


def grid_size(windows: int, steps: int) -> str:
    """`6 windows x 3 steps`, `1 window x 3 steps`: the grid's size."""
    return f"{counted(windows, 'window')} x {counted(steps, 'step')}"


class PipelineReport(BaseModel):
    """A pipeline over windows: the window x step grid, failures first in its texts."""

    pipeline: str
    steps: list[str]
    rows: list[PipelineRow]
    dry_run: bool = False

    def failures(self) -> list[tuple[PipelineRow, StepCell]]:
        return [(row, cell) for row in self.rows for cell in row.cells if cell.failed]

    @property
    def unknown(self) -> bool:
        return any(cell.result is StepResult.OUTCOME_UNKNOWN for _, cell in self.failures())

    def summary(self) -> str:
        """`6 windows x 3 steps: 16 succeeded, 1 failed, 1 not reached`."""
        counts = Counter(cell.result.value for row in self.rows for cell in row.cells)
        told = ", ".join(f"{n} {what}" for what, n in counts.most_common())
        return grid_size(len(self.rows), len(self.steps)) + (f": {told}" if told else "")

    def failure_lines(self) -> list[str]:
        """One line per failed or unknown cell: `2017-03 train: failed: run ended failed`."""
        return [
            f"{row.window} {cell.step}: {cell.result.value}"
            + (f": {cell.reason}" if cell.reason else "")
            + (f" ({cell.run_url})" if cell.run_url else "")
            for row, cell in self.failures()
        ]

    def resume_hint(self) -> str | None:
        """What to run next, if anything failed."""
        if not self.failures():
            return None
        hint = (
            "Resume: run the same backfill with --reprocess failed (each failed step starts "
            "again, then the steps after it; succeeded steps are never started again), or "
            "--from-step STEP to run a step and every step after it again"
        )
        if self.unknown:
            hint += (
                ". An outcome unknown means a run may exist: the backfill asks CML (API v2) "
                "before starting it again"
            )
        return hint

    def payload(self) -> dict[str, Any]:
        """The report for scripts (`--json`): the model and its summary line."""
        return self.model_dump(mode="json") | {"summary": self.summary()}

    def table(self) -> str:
        """The grid for a terminal: each step's job (and its own variables), then a row per
        window (the variables every step gets, each step's result). Plain escaped columns
        (`_text.columns`): no server text can drive the terminal."""
        title = f"Pipeline {self.pipeline}" + (
            " (dry run: nothing started)" if self.dry_run else ""
        )
        first = self.rows[0].cells if self.rows else []
        shared = _shared_environment(first)
        jobs = [[c.step, c.job_url, _shown(c.environment, exclude=shared)] for c in first]
        grid = [
            [
                row.window,
                _shown(_shared_environment(row.cells)),
                *(c.result.value for c in row.cells),
            ]
            for row in self.rows
        ]
        parts = [printable(title)]
        if jobs:
            parts.append(columns(["step", "job", "own variables"], jobs))
        parts.append(columns(["window", "environment", *self.steps], grid))
        return "\n".join(parts)

    def markdown(self) -> str:
        """The grid as markdown: a summary, the failures, what to run next, then the grid
        (each cell's result links to its CML run)."""
        lines = [f"### Pipeline {self.pipeline}: {self.summary()}", ""]
        failures = self.failure_lines()
        if failures:
            lines += ["**Failed**:", ""] + [f"- {markdown_text(line)}" for line in failures] + [""]
            lines += [markdown_text(self.resume_hint() or ""), ""]
        lines += ["| window | " + " | ".join(self.steps) + " |"]
        lines += ["|---" * (len(self.steps) + 1) + "|"]
        for row in self.rows:
            lines.append(f"| {row.window} | " + " | ".join(_md_cell(c) for c in row.cells) + " |")
        jobs = {cell.step: cell.job_url for cell in (self.rows[0].cells if self.rows else [])}
        lines += ["", "Jobs: " + ", ".join(f"[{step}]({url})" for step, url in jobs.items())]
        return "\n".join(lines) + "\n"


def _shared_environment(cells: Iterable[StepCell]) -> dict[str, str]:
    """The variables every one of `cells` was sent (the window's dates, the pipeline's)."""
    found: dict[str, str] | None = None
    for cell in cells:
        env = cell.environment
        found = dict(env) if found is None else {k: v for k, v in found.items() if env.get(k) == v}
    return found or {}


def _shown(environment: Mapping[str, str], exclude: Mapping[str, str] | None = None) -> str:
    """`START_DATE=2017-01-01 END_DATE=2017-01-31`, leaving out what `exclude` holds."""
    hidden = exclude or {}
    return " ".join(f"{k}={v}" for k, v in environment.items() if hidden.get(k) != v)


def planned_report(plan: PipelinePlan) -> PipelineReport:
    """The dry run's grid: every (window, step) planned, with its environment."""
    rows = []
    for window in plan.windows:
        cells = {
            name: StepCell(
                step=name,
                result=StepResult.PLANNED,
                job_url=job.page_url,
                environment=planned.environment,
            )
            for name, (job, planned) in window.steps.items()
        }
        rows.append(PipelineRow.of(window, cells))
    names = [step.name for step in plan.pipeline.order()]
    return PipelineReport(pipeline=plan.pipeline.name, steps=names, rows=rows, dry_run=True)


def recorded_report(plan: PipelinePlan, records: RecordsByJob) -> PipelineReport:
    """The grid as the steps' window records tell it (`cml-jobs records --pipeline`)."""
    rows = [window.recorded_row(records) for window in plan.windows]
    names = [step.name for step in plan.pipeline.order()]
    return PipelineReport(pipeline=plan.pipeline.name, steps=names, rows=rows)


def _md_cell(cell: StepCell) -> str:
    word = cell.result.value
    shown = f"[{word}]({cell.run_url})" if cell.run_url else word
    if cell.failed and cell.reason:
        shown += f": {markdown_text(cell.reason[:80])}"
    return shown


class PipelineFailed(BackfillFailed):
    """A step of a pipeline's windows failed, or its outcome is unknown; carries the grid, so
    whoever ran the flow still shows every window."""

    def __init__(self, report: PipelineReport) -> None:
        self.report = report
        failures = report.failure_lines()
        told = counted(len(failures), "step")
        super().__init__(f"{told} failed or unknown:\n" + "\n".join(failures))
