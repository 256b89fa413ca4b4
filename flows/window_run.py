"""`cml-window-run`: start one CML job run for one date window, as a schedule would.

Without an explicit window the flow takes the window from the flow run's SCHEDULED start time
(`prefect.runtime.flow_run.scheduled_start_time`), never from the wall clock: a run scheduled
for 2017-02-01 02:00 Europe/Berlin sends January 2017 even if it starts two days late or is
retried next week. Every input is checked before any request, so a typo fails the run at once.

The start takes the backfill's per-window path (`cml_tasks.window_tasks.backfill_window`): the
window's record and lock, and a slot of the project's global concurrency limit. So a scheduled
run and a backfill of the same window never both start it (the second one starts nothing and
says so), and together they stay under the project's limit.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from cml_tasks.backfill import PlannedWindow, WindowOutcome, window_key
from cml_tasks.blocks import CMLCredentials
from cml_tasks.errors import CMLConfigError, CMLError, CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.models import StartedRun
from cml_tasks.tasks import job_slug, resolve_settings
from cml_tasks.windows import (
    Cadence,
    Window,
    explicit_window,
    make_rendering,
    parse_every,
    window_for,
)


class WindowPlan(BaseModel):
    """What a window run will do, decided before any request."""

    model_config = ConfigDict(frozen=True)

    job: JobRef
    cadence: Cadence
    window: Window
    environment: dict[str, str]
    scheduled_for: datetime | None
    """The scheduled start time the window came from; None for an explicit window."""

    @property
    def scheduled_local(self) -> str:
        """The scheduled time in the cadence's zone, as the window was read; empty if explicit."""
        if self.scheduled_for is None:
            return ""
        local = self.scheduled_for.astimezone(self.cadence.zone)
        return f"{local.isoformat()} ({self.cadence.timezone})"

    @property
    def run_name(self) -> str:
        """`risk-analysis/208 2017-01`: the UI's run list reads like a calendar."""
        return f"{self.job.slug} {self.window.label}"


def plan_window_run(
    job: str,
    *,
    every: str = "month",
    timezone: str = "UTC",
    week_start: str = "monday",
    lag: int = 1,
    start_var: str = "START_DATE",
    end_var: str = "END_DATE",
    date_format: str = "%Y-%m-%d",
    inclusive_end: bool = True,
    extra_environment: dict[str, str] | None = None,
    window_start: date | None = None,
    window_end: date | None = None,
    scheduled_for: datetime | None = None,
) -> WindowPlan:
    """Validate every option and pick the window: explicit if given, else from `scheduled_for`.

    Raises `CMLInputError` for any bad input. Pure: no Prefect, no network.
    """
    ref = JobRef.parse(job)
    cadence = parse_every(every, week_start=week_start, timezone=timezone)
    rendering = make_rendering(
        start_var=start_var,
        end_var=end_var,
        date_format=date_format,
        inclusive_end=inclusive_end,
        extra=extra_environment,
    )
    if window_start is not None:
        window = explicit_window(cadence, window_start, window_end)
        scheduled_for = None
    elif window_end is not None:
        raise CMLInputError(
            f"window_end {window_end.isoformat()} given without window_start: give both "
            "(or only window_start), or neither to use the scheduled start time"
        )
    elif scheduled_for is None:
        raise CMLInputError(
            "no window: give window_start (and optionally window_end), or run as a flow run "
            "whose scheduled start time picks the window"
        )
    else:
        window = window_for(scheduled_for, cadence, lag=lag)
    return WindowPlan(
        job=ref,
        cadence=cadence,
        window=window,
        environment=rendering.environment(window),
        scheduled_for=scheduled_for,
    )


def _scheduled_start() -> datetime | None:
    """The current flow run's scheduled start time; None outside a flow run (never "now")."""
    if flow_run.id is None:
        return None
    scheduled: datetime = flow_run.scheduled_start_time
    return scheduled


def _flow_run_name() -> str:
    """Run name from the plan; bad input still names the run (the flow then fails clearly)."""
    parameters = dict(flow_run.parameters)
    parameters.pop("credentials_block", None)
    job = parameters.pop("job", "?")
    try:
        return plan_window_run(job, **parameters, scheduled_for=_scheduled_start()).run_name
    except (ValueError, TypeError, AttributeError):  # CMLInputError is a ValueError
        return f"{job_slug(job)} (invalid input)"


def _load_credentials(name: str | None) -> CMLCredentials | None:
    """The named block, or None to read the `CML_*` environment."""
    if name is None:
        return None
    try:
        block = CMLCredentials.load(name)
    except ValueError:
        raise CMLConfigError(
            f"No CMLCredentials block named {name!r}: create it in the Prefect UI "
            f"(Blocks > CML Credentials) or with CMLCredentials(...).save({name!r})"
        ) from None
    assert isinstance(block, CMLCredentials)
    return block


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _artifact_markdown(plan: WindowPlan, run: StartedRun, outcome: WindowOutcome) -> str:
    window = plan.window
    started = outcome.result != "skipped"
    rows = [
        (
            "Outcome",
            f"started ({outcome.reason or 'not started yet'})"
            if started
            else f"**nothing started**: {outcome.reason}",
        ),
        ("Job", f"[{run.job.path}]({run.job_url})"),
        ("Window", f"{window.start.isoformat()} .. {window.last_day.isoformat()} ({window})"),
        ("Cadence", str(plan.cadence)),
        (
            "Window from",
            f"scheduled start {plan.scheduled_local}"
            if plan.scheduled_for
            else "explicit window parameters",
        ),
        ("Engine id", f"`{run.engine_id}`"),
    ]
    lines = [f"### {plan.run_name}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    sent = "Environment sent:" if started else "Environment the window's run was sent:"
    lines += ["", sent, "", "| Variable | Value |", "|---|---|"]
    lines += [f"| `{name}` | `{_cell(value)}` |" for name, value in run.environment.items()]
    return "\n".join(lines) + "\n"


def _artifact_key(job: JobRef) -> str:
    """One key per job, so the UI lists each job's window runs as versions of one artifact."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{job.project}-{job.job_id}".lower()).strip("-")
    return f"cml-window-{slug}"


@flow(name="cml-window-run", flow_run_name=_flow_run_name)
def cml_window_run(
    job: str,
    every: str = "month",
    timezone: str = "UTC",
    week_start: str = "monday",
    lag: int = 1,
    start_var: str = "START_DATE",
    end_var: str = "END_DATE",
    date_format: str = "%Y-%m-%d",
    inclusive_end: bool = True,
    extra_environment: dict[str, str] | None = None,
    window_start: date | None = None,
    window_end: date | None = None,
    credentials_block: str | None = None,
) -> StartedRun:
    """Start a CML job for one date window and leave an artifact describing what was sent.

    Args:
        job: The job's Overview page URL, or `user/project/job_id` with `CML_HOST` set.
        every: Cadence: "month", "week", "day", "quarter", "year", or "N months" etc.
        timezone: IANA zone the scheduled time is read in (e.g. "Europe/Berlin").
        week_start: First day of weekly windows ("monday".."sunday").
        lag: 1 = last complete window before the scheduled time, 0 = the one in progress.
        start_var: Variable that receives the window's first day.
        end_var: Variable that receives the window's end.
        date_format: strftime format of both dates.
        inclusive_end: True: end_var is the last day (2017-01-31); False: the day after.
        extra_environment: Fixed variables sent as well.
        window_start: Explicit window instead of the schedule: its first day, which must
            start a window of the cadence.
        window_end: The explicit window's LAST day (inclusive, whatever `inclusive_end`
            renders); optional, but if given it must end that same window.
        credentials_block: Name of a saved CMLCredentials block; default: `CML_*` variables.
    """
    plan = plan_window_run(
        job,
        every=every,
        timezone=timezone,
        week_start=week_start,
        lag=lag,
        start_var=start_var,
        end_var=end_var,
        date_format=date_format,
        inclusive_end=inclusive_end,
        extra_environment=extra_environment,
        window_start=window_start,
        window_end=window_end,
        scheduled_for=_scheduled_start(),
    )
    logger = get_run_logger()
    if plan.scheduled_for is not None:
        logger.info(
            "Scheduled for %s: window %s (%s, lag %d)",
            plan.scheduled_local,
            plan.window,
            plan.cadence,
            lag,
        )
    credentials = _load_credentials(credentials_block)
    run, outcome = _start_window(plan, credentials)
    create_markdown_artifact(
        key=_artifact_key(plan.job),
        markdown=_artifact_markdown(plan, run, outcome),
        description=f"CML run for {plan.run_name}"
        + ("" if outcome.result != "skipped" else " (already started: nothing started)"),
    )
    return run


def _start_window(
    plan: WindowPlan, credentials: CMLCredentials | None
) -> tuple[StartedRun, WindowOutcome]:
    """Start the window through its record and the project's limit, as a backfill does.

    Returns the window's run - the one started now, or the one a backfill or an earlier run
    started (nothing is started then) - and what happened.
    """
    from cml_tasks.window_tasks import (
        backfill_window,
        ensure_project_limit,
        read_record,
        record_store,
    )

    settings = resolve_settings(credentials)
    job = plan.job.with_host(settings.host)
    planned = PlannedWindow(
        window=plan.window, key=window_key(job, plan.window), environment=plan.environment
    )
    outcome: WindowOutcome = backfill_window(
        job=job,
        planned=planned,
        credentials=settings,
        project_limit=ensure_project_limit(job),
    )
    if outcome.result == "skipped":
        get_run_logger().warning(
            "Nothing started for %s: %s", plan.run_name, outcome.reason or "already started"
        )
    record = read_record(record_store(), planned.key)
    if record is None or record.engine_id is None:  # e.g. another start failed meanwhile
        raise CMLError(
            f"{plan.run_name}: nothing started ({outcome.reason}), and no run is recorded",
            job_url=job.page_url,
        )
    run = StartedRun(
        engine_id=record.engine_id,
        job=job,
        environment=record.environment,
        requested_at=record.attempted_at or record.updated_at,
    )
    return run, outcome
