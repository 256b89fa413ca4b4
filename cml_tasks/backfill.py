"""Backfill planning: which windows, in which order, under which key, and whether to start each.

Pure Python (no Prefect import), so `cml-jobs backfill --dry-run` is fast and the rules are
tested without a server. Prefect runs the plan in `cml_tasks.window_tasks` and
`flows/backfill.py`.

The record of a window lives under :func:`window_key`: one key per (job, window), derived from
the workspace host, user, project, job id and the window's dates - not from the rendering, so
changing variable names or the date format does not make a month look "never started". Its
:class:`WindowStatus` says what happened; :func:`decide` turns it into an :class:`Action`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.windows import Cadence, Window, make_rendering, parse_every, windows_between

__all__ = [
    "Action",
    "BackfillPlan",
    "BackfillReport",
    "Order",
    "PlannedWindow",
    "Reprocess",
    "WindowOutcome",
    "WindowRecord",
    "WindowStatus",
    "decide",
    "plan_backfill",
    "project_limit_name",
    "window_key",
]

KEY_PREFIX = "cml-backfill-"
"""Prefix of every record key (a file name in local result storage)."""


class Reprocess(StrEnum):
    """Which windows a backfill starts."""

    MISSING = "missing"
    """Windows not started yet, or whose start surely failed (default)."""
    FAILED = "failed"
    """Only windows whose start failed or, when followed, whose run failed."""
    ALL = "all"
    """Every window, whatever its record says (an explicit, deliberate re-run)."""


class Order(StrEnum):
    OLDEST = "oldest"
    NEWEST = "newest"


class WindowStatus(StrEnum):
    """What the record of one (job, window) says."""

    STARTING = "starting"
    """Written just before the start call: seen later, the call was interrupted mid-flight."""
    STARTED = "started"
    START_FAILED = "start_failed"
    """CML surely did not start a run (bad request, auth, 404, refused connection...)."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """The start may or may not have happened; a human (or API v2) must decide."""
    SUCCEEDED = "succeeded"
    RUN_FAILED = "run_failed"
    """Followed to completion: the run ended FAILED, TIMEDOUT, STOPPED or SKIPPED."""


class Action(StrEnum):
    START = "start"
    SKIP = "skip"
    UNKNOWN = "unknown"
    """Do not start: a run may exist already; report it."""


class WindowRecord(BaseModel):
    """The persisted record of one (job, window). Never holds a secret."""

    model_config = ConfigDict(frozen=True)

    key: str
    job_url: str
    window_start: date
    window_end: date
    environment: dict[str, str]
    status: WindowStatus
    engine_id: str | None = None
    """The run's id (v1 engine id = API v2 run id)."""
    error: str | None = None
    attempted_at: datetime | None = None
    """Our clock just before the start call: CML is asked for runs created since then."""
    run_status: str | None = None
    """The CML status a followed run ended with (`succeeded`, `failed`...)."""
    run_url: str | None = None
    """The run's page URL, once known."""
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class PlannedWindow(BaseModel):
    """One window of a backfill: its dates, record key and the environment it sends."""

    model_config = ConfigDict(frozen=True)

    window: Window
    key: str
    environment: dict[str, str]

    @property
    def label(self) -> str:
        return self.window.label


class BackfillPlan(BaseModel):
    """Everything decided before any request: the job, the cadence and the ordered windows."""

    model_config = ConfigDict(frozen=True)

    job: JobRef
    cadence: Cadence
    windows: list[PlannedWindow]


def window_key(job: JobRef, window: Window) -> str:
    """The record key of "this job, this window": stable across runs, machines and renderings.

    The job must have its host resolved: the same path on two workspaces is two jobs.
    """
    if job.host is None:
        raise CMLInputError(f"No CML host for job {job.slug}: give its full page URL")
    parts = ("v1", job.host, job.username, job.project, job.job_id)
    identity = "\n".join((*parts, window.start.isoformat(), window.end.isoformat()))
    return KEY_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:40]


def project_limit_name(job: JobRef) -> str:
    """The Prefect global concurrency limit shared by everything starting runs in a project.

    `/` is not allowed in Prefect names; `:` cannot occur in a user or project name.
    """
    return f"cml-project:{job.username}:{job.project}"


def plan_backfill(
    job: JobRef,
    start: date,
    end: date,
    *,
    every: str = "month",
    timezone: str = "UTC",
    week_start: str = "monday",
    start_var: str = "START_DATE",
    end_var: str = "END_DATE",
    date_format: str = "%Y-%m-%d",
    inclusive_end: bool = True,
    extra_environment: dict[str, str] | None = None,
    order: Order | str = Order.OLDEST,
) -> BackfillPlan:
    """The windows overlapping ``[start, end]`` (inclusive) in ``order``; raises CMLInputError."""
    try:
        order = Order(order)
    except ValueError:
        raise CMLInputError(f"invalid order {order!r}: use 'oldest' or 'newest'") from None
    cadence = parse_every(every, week_start=week_start, timezone=timezone)
    rendering = make_rendering(
        start_var=start_var,
        end_var=end_var,
        date_format=date_format,
        inclusive_end=inclusive_end,
        extra=extra_environment,
    )
    windows = windows_between(start, end, cadence)
    if order is Order.NEWEST:
        windows.reverse()
    planned = [
        PlannedWindow(window=w, key=window_key(job, w), environment=rendering.environment(w))
        for w in windows
    ]
    return BackfillPlan(job=job, cadence=cadence, windows=planned)


def decide(record: WindowRecord | None, reprocess: Reprocess) -> tuple[Action, str]:
    """Whether to start a window given its record, and why (shown in the UI and the report).

    A start that may have happened (`starting` left by a killed process, `outcome_unknown`) is
    never started again blindly: `UNKNOWN` means "ask CML first" (API v2: adopt the run if it
    exists, else start), and only `reprocess="all"`, a deliberate choice, re-runs it unasked.
    """
    if reprocess is Reprocess.ALL:
        return Action.START, "reprocess=all"
    if record is None:
        if reprocess is Reprocess.FAILED:
            return Action.SKIP, "never started (reprocess=failed only re-runs failures)"
        return Action.START, "not started yet"
    status = record.status
    if status in (WindowStatus.STARTING, WindowStatus.OUTCOME_UNKNOWN):
        return Action.UNKNOWN, (
            f"a previous start's outcome is unknown (record '{status}', "
            f"{record.updated_at:%Y-%m-%d %H:%M:%S} UTC): check the job's runs in CML; "
            "re-run it with reprocess=all if none started"
        )
    if status is WindowStatus.START_FAILED:
        return Action.START, f"previous start failed: {record.error}"
    if status is WindowStatus.RUN_FAILED and reprocess is Reprocess.FAILED:
        return Action.START, f"previous run failed: {record.error}"
    engine = f" (engine {record.engine_id})" if record.engine_id else ""
    return Action.SKIP, f"already {status.replace('_', ' ')}{engine}"


class WindowOutcome(BaseModel):
    """What a backfill did with one window: a row of the report and of the table artifact."""

    model_config = ConfigDict(frozen=True)

    window: str
    window_start: date
    window_end: date
    environment: dict[str, str]
    result: str
    """`planned`, `skipped`, `dispatched` (scale-out), a :class:`WindowStatus`, or `error`."""
    engine_id: str | None = None
    error: str | None = None
    reason: str | None = None
    job_url: str
    run_status: str | None = None
    """Followed runs: the CML status the run ended with."""
    run_url: str | None = None
    """The run's page URL when a run is known (else see `job_url`)."""

    @property
    def failed(self) -> bool:
        return self.result not in (
            "planned",
            "skipped",
            "dispatched",
            WindowStatus.STARTED,
            WindowStatus.SUCCEEDED,
        )

    @classmethod
    def of(cls, job: JobRef, planned: PlannedWindow, result: str, **fields: Any) -> WindowOutcome:
        """The row of one planned window of `job`, with `result` and any further fields."""
        return cls(
            window=planned.label,
            window_start=planned.window.start,
            window_end=planned.window.end,
            environment=planned.environment,
            result=result,
            job_url=job.page_url,
            **fields,
        )


class BackfillReport(BaseModel):
    """The whole backfill: one outcome per window, in plan order."""

    job_url: str
    outcomes: list[WindowOutcome]
    dry_run: bool = False

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def failures(self) -> list[WindowOutcome]:
        return [o for o in self.outcomes if o.failed]

    def summary(self) -> str:
        """`36 windows: 30 started, 5 skipped, 1 start failed`."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.result] = counts.get(outcome.result, 0) + 1
        parts = [f"{n} {name.replace('_', ' ')}" for name, n in counts.items()]
        return f"{len(self.outcomes)} windows" + (": " + ", ".join(parts) if parts else "")

    def failure_text(self) -> str:
        """One line per failed window, with why."""
        return "\n".join(
            f"{o.window}: {o.result.replace('_', ' ')}: {o.error or o.reason}"
            for o in self.failures
        )
