"""Backfill planning: which windows, in which order, under which key, and whether to start each.

Pure Python (no Prefect import), so `cml-jobs backfill --dry-run` is fast and the rules are
tested without a server. `cml_tasks.window_start` starts each window safely;
`cml_tasks.prefect` runs the plan as Prefect task and flow runs.

The record of a window lives under :func:`window_key`: one key per (job, window), derived from
the workspace host, user, project, job id and the window's dates - not from the rendering, so
changing variable names or the date format does not make a month look "never started". Its
:class:`WindowStatus` says what happened; :func:`decide` turns it into an :class:`Action`, and
a :class:`WindowOutcome` with its :class:`WindowResult` is the window's row of the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cml_tasks._text import markdown_text, shortened
from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.window_options import WindowOptions
from cml_tasks.windows import Cadence, Window, windows_between

__all__ = [
    "Action",
    "BackfillPlan",
    "BackfillReport",
    "Order",
    "PlannedWindow",
    "Reprocess",
    "WindowOutcome",
    "WindowRecord",
    "WindowResult",
    "WindowStatus",
    "decide",
    "decide_record",
    "job_tag",
    "legacy_job_tag",
    "legacy_window_key",
    "plan_backfill",
    "project_limit_name",
    "window_key",
]

LEGACY_KEY_PREFIX = "cml-backfill-"
"""Prefix of the record keys before they were readable (`legacy_window_key`)."""
KEY_DIGEST_CHARS = 12
"""Hex digits of the identity's digest that end a record key."""
MAX_SLUG_CHARS = 100
"""A record key names at most this much of the project and job id (a name has 255 at most)."""
MAX_CONCURRENCY = 64
"""Upper bound of a backfill's `max_concurrency` (its flow's thread pool has this many)."""


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
    """The window's last day (inclusive, as everywhere a person reads it)."""
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
    holder: str | None = None
    """Who holds the window while starting it (`host:pid:token`); None once settled."""
    lease_until: datetime | None = None
    """The holder's claim ends then unless renewed: a holder that died frees the window."""
    attempt: int = 0
    """How often the window was taken over (a restart, an adoption): orders the claims."""

    @property
    def window(self) -> Window:
        return Window(start=self.window_start, end=self.window_end + timedelta(days=1))

    def held_by_another(self, holder: str, now: datetime) -> bool:
        """Some other process holds the window and its lease is still running."""
        return (
            self.holder is not None
            and self.holder != holder
            and self.lease_until is not None
            and self.lease_until > now
        )


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


def window_key(job: JobRef, window: Window, extra: Mapping[str, str] | None = None) -> str:
    """The record key of "this job, this window": stable across runs, machines and renderings,
    and readable where the Prefect UI lists it: `cml-risk-analysis-208-2017-11-01-2017-11-30-`
    and 12 hex digits, the start of `legacy_window_key`'s digest, which tells apart the same
    project and job id on two hosts or users and a pipeline step's own environment.

    `extra` is a pipeline step's own environment: a step with some is its own (step, window);
    one without shares the plain job's record. The job must have its host resolved: the same
    path on two workspaces is two jobs.
    """
    digest = legacy_window_key(job, window, extra).removeprefix(LEGACY_KEY_PREFIX)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{job.project}-{job.job_id}".lower()).strip("-")
    dates = f"{window.start.isoformat()}-{window.last_day.isoformat()}"
    return f"cml-{slug[:MAX_SLUG_CHARS]}-{dates}-{digest[:KEY_DIGEST_CHARS]}"


def legacy_window_key(job: JobRef, window: Window, extra: Mapping[str, str] | None = None) -> str:
    """The key records had before they were readable (`cml-backfill-` and 40 hex digits):
    still read, and moved to `window_key` when the window is next written."""
    if job.host is None:
        raise CMLInputError(f"No CML host for job {job.slug}: give its full page URL")
    parts = ("v1", job.host, job.username, job.project, job.job_id)
    identity = "\n".join((*parts, window.start.isoformat(), window.end.isoformat()))
    if extra:
        identity += "\n" + json.dumps(sorted(extra.items()))
    return LEGACY_KEY_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:40]


def legacy_key_of(key: str) -> str:
    """The start of a readable key's legacy key: a record from before is found by it."""
    return LEGACY_KEY_PREFIX + key[-KEY_DIGEST_CHARS:]


def job_tag(job: JobRef) -> str:
    """The tag of every record of `job`, as on its runs: `cml-job:risk-analysis/208` (a job of
    the same project and id on another host or user shares it: readers check `job_url`)."""
    return f"cml-job:{job.project}/{job.job_id}"


def legacy_job_tag(job: JobRef) -> str:
    """The tag records of `job` had before they were readable (`cml-job-<16 hex>`)."""
    if job.host is None:
        raise CMLInputError(f"No CML host for job {job.slug}: give its full page URL")
    identity = "\n".join(("v1", job.host, job.username, job.project, job.job_id))
    return "cml-job-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def project_limit_name(job: JobRef) -> str:
    """The Prefect global concurrency limit shared by everything starting runs in a project.

    `/` is not allowed in Prefect names; `:` cannot occur in a user or project name.
    """
    return f"cml-project:{job.username}:{job.project}"


def plan_backfill(
    job: JobRef,
    start: date,
    end: date,
    options: WindowOptions | None = None,
    order: Order | str = Order.OLDEST,
) -> BackfillPlan:
    """The windows overlapping ``[start, end]`` (inclusive) in ``order``; raises CMLInputError."""
    try:
        order = Order(order)
    except ValueError:
        raise CMLInputError(f"invalid order {order!r}: use 'oldest' or 'newest'") from None
    options = options if options is not None else WindowOptions()
    windows = windows_between(start, end, options.cadence)
    if order is Order.NEWEST:
        windows.reverse()
    render = options.rendering.environment
    planned = [
        PlannedWindow(window=w, key=window_key(job, w), environment=render(w)) for w in windows
    ]
    return BackfillPlan(job=job, cadence=options.cadence, windows=planned)


def check_run_options(
    *,
    max_concurrency: int,
    reprocess: str,
    follow: bool,
    scale_out: bool,
    poll_interval: float,
    max_wait: float | None = None,
) -> Reprocess:
    """Check how a backfill is to run (dry run or not: one check for both); the reprocess
    mode, or a CMLInputError."""
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise CMLInputError(f"max_concurrency must be 1..{MAX_CONCURRENCY}, got {max_concurrency}")
    try:
        mode = Reprocess(reprocess)
    except ValueError:
        raise CMLInputError(
            f"invalid reprocess {reprocess!r}: use 'missing', 'failed' or 'all'"
        ) from None
    if follow and scale_out:
        raise CMLInputError(
            "follow=True runs in-process; with scale_out the window flow runs start them"
        )
    if not 0 < poll_interval < math.inf:
        raise CMLInputError(f"poll_interval must be a positive number, got {poll_interval}")
    if max_wait is not None and not 0 < max_wait < math.inf:
        raise CMLInputError(f"max_wait must be a positive number of seconds, got {max_wait}")
    return mode


def decide(
    status: WindowStatus | None,
    reprocess: Reprocess,
    detail: str = "",
    *,
    retry_failed: bool = False,
) -> tuple[Action, str]:
    """Whether to start a window, given the status of its record (None: no record), and why
    (shown in the UI and the report). `detail` says where the status comes from.
    `retry_failed`: a failed run is started again under `missing` too (a pipeline's step:
    everything that has not succeeded is still to do).

    A start that may have happened (`starting` left by a killed process, `outcome_unknown`) is
    never started again blindly: `UNKNOWN` means "ask CML first" (API v2: adopt the run if it
    exists, else start), and only `reprocess="all"`, a deliberate choice, re-runs it unasked.
    """
    if reprocess is Reprocess.ALL:
        return Action.START, "reprocess=all"
    if status is None:
        if reprocess is Reprocess.FAILED:
            return Action.SKIP, "never started (reprocess=failed only re-runs failures)"
        return Action.START, "its first start"
    if status in (WindowStatus.STARTING, WindowStatus.OUTCOME_UNKNOWN):
        return Action.UNKNOWN, (
            f"a previous start's outcome is unknown ({detail}): check the job's runs in CML; "
            "re-run it with reprocess=all if none started"
        )
    if status is WindowStatus.START_FAILED:
        return Action.START, f"previous start failed: {detail}"
    if status is WindowStatus.RUN_FAILED and (reprocess is Reprocess.FAILED or retry_failed):
        return Action.START, f"previous run failed: {detail}"
    return Action.SKIP, f"already {status.replace('_', ' ')}" + (f" ({detail})" if detail else "")


def decide_record(
    record: WindowRecord | None, reprocess: Reprocess, *, retry_failed: bool = False
) -> tuple[Action, str]:
    """`decide` for a window's record."""
    status = None if record is None else record.status
    return decide(status, reprocess, _detail(record), retry_failed=retry_failed)


def settled_skip(record: WindowRecord | None, reprocess: Reprocess, follow: bool) -> str | None:
    """Why a window is skipped without a task run or a request: its record (read with the
    job's others) is settled and says so - not one that a follow resumes, not one in flight."""
    if record is None or record.status is WindowStatus.STARTING:
        return None
    action, reason = decide_record(record, reprocess)
    resumable = follow and record.status is WindowStatus.STARTED
    return reason if action is Action.SKIP and not resumable else None


def _detail(record: WindowRecord | None) -> str:
    if record is None:
        return ""
    if record.status in (WindowStatus.STARTING, WindowStatus.OUTCOME_UNKNOWN):
        return f"record '{record.status}', {record.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    if record.status in (WindowStatus.START_FAILED, WindowStatus.RUN_FAILED):
        return record.error or ""
    return f"engine {record.engine_id}" if record.engine_id else ""


class WindowResult(StrEnum):
    """What a backfill did with one window: a record's status, or one of these."""

    PLANNED = "planned"
    """Dry run: nothing was asked."""
    SKIPPED = "skipped"
    DISPATCHED = "dispatched"
    """Scale-out: a flow run of the window deployment was created for it."""
    STARTED = WindowStatus.STARTED.value
    SUCCEEDED = WindowStatus.SUCCEEDED.value
    START_FAILED = WindowStatus.START_FAILED.value
    OUTCOME_UNKNOWN = WindowStatus.OUTCOME_UNKNOWN.value
    RUN_FAILED = WindowStatus.RUN_FAILED.value
    DUPLICATE = "duplicate"
    """Started, and CML shows another run of the window created at the same moment by
    someone else (a backfill on another Prefect server): see `duplicates`."""
    ERROR = "error"
    """Anything else went wrong (a bug, Prefect trouble): see the error."""

    @property
    def failed(self) -> bool:
        return self not in _NOT_FAILED


_NOT_FAILED = frozenset(
    {
        WindowResult.PLANNED,
        WindowResult.SKIPPED,
        WindowResult.DISPATCHED,
        WindowResult.STARTED,
        WindowResult.SUCCEEDED,
    }
)


class WindowOutcome(BaseModel):
    """What a backfill did with one window: a row of the report and of the table artifact."""

    model_config = ConfigDict(frozen=True)

    window: str
    window_start: date
    window_end: date
    environment: dict[str, str]
    result: WindowResult
    engine_id: str | None = None
    error: str | None = None
    reason: str | None = None
    job_url: str
    run_status: str | None = None
    """Followed runs: the CML status the run ended with."""
    run_url: str | None = None
    """The run's page URL when a run is known (else see `job_url`)."""
    adopted: bool = False
    """The run was not started now: CML had it already (a lost answer, a run without a
    record), and it was adopted."""
    duplicates: list[str] = []
    """A `duplicate`'s other runs: CML's ids of the window's runs someone else started."""

    @property
    def failed(self) -> bool:
        return self.result.failed

    @property
    def shown(self) -> str:
        """The result in words for a person: `adopted` for a run this process found in CML
        and did not start, else the result (`started`, `start failed`...)."""
        if self.adopted and self.result is WindowResult.STARTED:
            return "adopted"
        return self.result.replace("_", " ")

    def duplicated(self, others: list[str]) -> WindowOutcome:
        """This started window as a `duplicate` of the runs `others` (CML's ids)."""
        reason = (
            f"CML also has run {', '.join(others)} of this window, started at the same moment "
            f"by someone else (a backfill on another Prefect server?) as this run "
            f"{self.engine_id}: stop the one not wanted in CML"
        )
        return self.model_copy(
            update={"result": WindowResult.DUPLICATE, "duplicates": others, "reason": reason}
        )

    @classmethod
    def skipped(
        cls, job: JobRef, planned: PlannedWindow, reason: str, record: WindowRecord | None
    ) -> WindowOutcome:
        """A skipped window's row, with the run its `record` names (a report links it)."""
        return cls.of(
            job,
            planned,
            WindowResult.SKIPPED,
            reason=reason,
            engine_id=record.engine_id if record else None,
            run_url=record.run_url if record else None,
            run_status=record.run_status if record else None,
        )

    @classmethod
    def of(
        cls, job: JobRef, planned: PlannedWindow, result: WindowResult, **fields: Any
    ) -> WindowOutcome:
        """The row of one planned window of `job`, with `result` and any further fields."""
        return cls(
            window=planned.label,
            window_start=planned.window.start,
            window_end=planned.window.last_day,
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
    notes: list[str] = []
    """What the user should know about the whole run (a project limit smaller than
    `max_concurrency`, records this machine alone can see)."""

    def count(self, result: WindowResult | str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def failures(self) -> list[WindowOutcome]:
        return [o for o in self.outcomes if o.failed]

    def summary(self) -> str:
        """`36 windows: 28 started, 2 adopted, 5 skipped, 1 start failed`."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.shown] = counts.get(outcome.shown, 0) + 1
        parts = [f"{n} {name}" for name, n in counts.items()]
        return f"{len(self.outcomes)} windows" + (": " + ", ".join(parts) if parts else "")

    def failure_text(self) -> str:
        """One line per failed window, with why."""
        return "\n".join(
            f"{o.window}: {o.result.replace('_', ' ')}: {o.error or o.reason}"
            for o in self.failures
        )

    def resume_hint(self) -> str | None:
        """What to run next, if any window failed."""
        results = {o.result for o in self.failures}
        if not results:
            return None
        hints = []
        if results - {WindowResult.DUPLICATE}:
            hints.append(
                "Resume: run the same backfill with --reprocess failed (the failed windows "
                "start again; started ones never do)"
            )
        if WindowResult.OUTCOME_UNKNOWN in results:
            hints.append(
                "An outcome unknown means a run may exist: with CML_API_V2_KEY set the "
                "backfill asks CML before starting it again; without it, check the job's runs "
                "in CML, then rerun with --reprocess all if none started"
            )
        if WindowResult.DUPLICATE in results:
            hints.append(
                "A duplicate has two runs in CML (both ids are listed): stop the one not "
                "wanted in CML; nothing needs to run again"
            )
        return ". ".join(hints)

    def markdown(self, title: str) -> str:
        """The report for the UI: `title` and the summary, the failed and unknown windows
        (short reason, whole run id, link), what to run next, then every window in a compact
        table; the job page once."""
        lines = [f"### {markdown_text(title)}: {self.summary()}", ""]
        lines += [f"Job page: [{markdown_text(self.job_url)}]({self.job_url})", ""]
        lines += [f"**Note**: {markdown_text(note)}.\n" for note in self.notes]
        if self.failures:
            lines += ["**Failed or unknown**:", ""]
            for o in self.failures:
                why = markdown_text(o.reason or o.error or "")
                lines.append(f"- {o.window}: {o.shown}: {why}{_run_link(o, ' (run ', ')')}")
            lines += ["", markdown_text(self.resume_hint() or ""), ""]
        followed = any(o.run_status for o in self.outcomes)
        header = ["window", "result", *(["CML status"] if followed else []), "run or reason"]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for o in self.outcomes:
            detail = _run_link(o, "", "") or markdown_text(shortened(o.reason or "", 60))
            status = [markdown_text(o.run_status or "")] if followed else []
            lines.append("| " + " | ".join([o.window, o.shown, *status, detail]) + " |")
        return "\n".join(lines) + "\n"


def _run_link(outcome: WindowOutcome, before: str, after: str) -> str:
    """`[run id](run page)` between `before` and `after`, or empty without a run."""
    if not (outcome.engine_id and outcome.run_url):
        return ""
    return f"{before}[{markdown_text(outcome.engine_id)}]({outcome.run_url}){after}"
