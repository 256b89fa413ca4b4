"""`cml-window-run`: start one CML job run for one date window, as a schedule would.

Without an explicit window the flow takes the window from the flow run's SCHEDULED start time
(`prefect.runtime.flow_run.scheduled_start_time`), never from the wall clock: a run scheduled
for 2017-02-01 02:00 Europe/Berlin sends January 2017 even if it starts two days late or is
retried next week. Every input is checked before any request, so a typo fails the run at once.

The start goes through the task `cml-window` (`window_task.start_window`): the window's record
and claim, and a slot of the project's global concurrency limit. So a scheduled run and a
backfill of the same window never both start it (the second one starts nothing and says so),
and together they stay under the project's limit.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from cml_tasks.backfill import WindowOutcome, WindowResult
from cml_tasks.errors import CMLError, CMLOutcomeUnknown
from cml_tasks.models import StartedRun
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
from cml_tasks.prefect.project_limit import ensure_project_limit
from cml_tasks.prefect.records import NOT_SHARED, window_records
from cml_tasks.prefect.tasks import resolve_settings
from cml_tasks.prefect.window_task import start_window
from cml_tasks.window_options import WindowOptions
from cml_tasks.window_plan import WindowPlan, plan_window_run


def scheduled_start() -> datetime | None:
    """The current flow run's scheduled start time; None outside a flow run (never "now")."""
    if flow_run.id is None:
        return None
    scheduled: datetime = flow_run.scheduled_start_time
    return scheduled


def _flow_run_name() -> str:
    """Run name from the plan; bad input still names the run (the flow then fails clearly)."""
    parameters = dict(flow_run.parameters)
    job = parameters.get("job", "?")
    try:
        return plan_window_run(
            job,
            WindowOptions.model_validate(parameters.get("options") or {}),
            lag=parameters.get("lag", 1),
            window_start=parameters.get("window_start"),
            window_end=parameters.get("window_end"),
            scheduled_for=scheduled_start(),
        ).run_name
    except (ValueError, TypeError, AttributeError):  # CMLInputError is a ValueError
        return f"{job_slug(job)} (invalid input)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _artifact_markdown(
    plan: WindowPlan,
    outcome: str,
    run: StartedRun | None,
    job_url: str,
    environment: dict[str, str],
) -> str:
    window = plan.window
    rows = [
        ("Outcome", outcome),
        ("Job", f"[job page]({job_url})"),
        ("Window", f"{window.start.isoformat()} .. {window.last_day.isoformat()} ({window})"),
        ("Cadence", str(plan.cadence)),
        (
            "Window from",
            f"scheduled start {plan.scheduled_local}"
            if plan.scheduled_for
            else "explicit window parameters",
        ),
    ]
    if run is not None:
        rows.append(("Run", f"[run {run.engine_id[:4]}…]({job_url}/runs/{run.engine_id})"))
        rows.append(("Engine id", f"`{run.engine_id}`"))
    lines = [f"### {plan.run_name}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    lines += ["", "Environment of the window:", "", "| Variable | Value |", "|---|---|"]
    lines += [f"| `{name}` | `{_cell(value)}` |" for name, value in environment.items()]
    return "\n".join(lines) + "\n"


@flow(name="cml-window-run", flow_run_name=_flow_run_name)
def cml_window_run(
    job: Annotated[str, ui_title("Job page URL")],
    options: Annotated[WindowOptions, ui_title("Window cadence and dates")] = WindowOptions(),
    lag: Annotated[int, ui_title("Windows back (lag)")] = 1,
    window_start: Annotated[date | None, ui_title("Window start (explicit)")] = None,
    window_end: Annotated[date | None, ui_title("Window end (explicit, last day)")] = None,
    credentials: CredentialsParameter = None,
) -> StartedRun:
    """Start a CML job for one date window and leave an artifact describing what was sent.

    Args:
        job: The job's Overview page URL, or `user/project/job_id` with `CML_HOST` set.
        options: Cadence and rendering of the windows (default: calendar months in UTC,
            START_DATE/END_DATE as YYYY-MM-DD, the end inclusive).
        lag: 1 = last complete window before the scheduled time, 0 = the one in progress.
        window_start: Explicit window instead of the schedule: its first day, which must
            start a window of the cadence.
        window_end: The explicit window's LAST day (inclusive, whatever `inclusive_end`
            renders); optional, but if given it must end that same window.
        credentials: A saved CML Credentials block; default: the `CML_*` variables.
    """
    ensure_block_type_registered(get_run_logger())
    plan = plan_window_run(
        job,
        options,
        lag=lag,
        window_start=window_start,
        window_end=window_end,
        scheduled_for=scheduled_start(),
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
    settings = resolve_settings(credentials)
    job_ref = plan.job.with_host(settings.host)
    tag_current_flow_run(job_tags(job_ref))
    planned = plan.planned(job_ref)
    records = window_records()
    note = "" if records.shared_api else f"\n**Note**: {NOT_SHARED}.\n"
    if note:
        logger.warning("%s", NOT_SHARED)

    def artifact(outcome: str, run: StartedRun | None, description: str) -> None:
        create_markdown_artifact(
            key=artifact_key("window", plan.job),
            markdown=_artifact_markdown(plan, outcome, run, job_ref.page_url, planned.environment)
            + note,
            description=f"{plan.run_name}: {description}",
        )

    try:
        with tags(*job_tags(job_ref)):
            state = start_window.with_options(task_run_name=f"start {plan.run_name}")(
                job=job_ref,
                planned=planned,
                credentials=settings,
                project_limit=ensure_project_limit(job_ref),
                return_state=True,
            )
        outcome: WindowOutcome = state.result()  # raises the start's CMLError
        record = records.read(planned.key)
        if record is None or record.engine_id is None:  # e.g. another start failed meanwhile
            raise CMLError(
                f"{plan.run_name}: nothing started ({outcome.reason}), and no run is recorded",
                job_url=job_ref.page_url,
            )
    except CMLError as error:
        reason = short_reason(error)
        unknown = isinstance(error, CMLOutcomeUnknown)
        artifact(f"**{'outcome unknown' if unknown else 'start failed'}**: {reason}", None, reason)
        name = OUTCOME_UNKNOWN_STATE if unknown else "Failed"
        return Failed(  # type: ignore[return-value]
            name=name, message=f"{plan.run_name}: {reason}", data=error
        )
    run = StartedRun(
        engine_id=record.engine_id,
        job=job_ref,
        environment=record.environment,
        requested_at=record.attempted_at or record.updated_at,
    )
    if outcome.result is WindowResult.SKIPPED:
        logger.warning("Nothing started for %s: %s", plan.run_name, outcome.reason)
        artifact(f"**nothing started**: {outcome.reason}", run, "already started, nothing started")
    else:
        artifact(f"started run {run.engine_id}", run, f"started run {run.engine_id}")
    return run
