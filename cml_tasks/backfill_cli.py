"""The work of `cml-jobs backfill`: a dry run without Prefect, or the `cml-backfill` flow with
a progress bar (stderr) and a summary table; `--json` prints the report for scripts.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import httpx
import typer
from rich.console import Console

from cml_tasks._text import columns, printable
from cml_tasks.backfill import (
    BackfillPlan,
    BackfillReport,
    Reprocess,
    WindowOutcome,
    WindowResult,
    check_run_options,
    plan_backfill,
    settled_skip,
)
from cml_tasks.errors import BackfillFailed, CMLError
from cml_tasks.job import JobRef
from cml_tasks.prefect_rest import job_records, prefect_api_from_settings
from cml_tasks.record_layout import find
from cml_tasks.settings import CMLSettings


def dry_run(job: str, start: date, end: date, options: dict[str, Any]) -> BackfillReport:
    """The windows and environments a backfill would send: no Prefect, no request, but every
    check a real run makes before its first request."""
    plan, _ = _checked_plan(job, start, end, options, dry_run=True)
    outcomes = [WindowOutcome.of(plan.job, p, WindowResult.PLANNED) for p in plan.windows]
    return BackfillReport(job_url=plan.job.page_url, outcomes=outcomes, dry_run=True)


def settled(
    job: str, start: date, end: date, options: dict[str, Any]
) -> tuple[BackfillReport, str] | None:
    """The report of a rerun with nothing to start (every window's record says skip), read
    from the Prefect API without importing Prefect, and where it was read; None when a flow
    run is needed, or when the records cannot be read this way (the flow reads them again).
    Raises what the flow would for bad input, before its request."""
    api = prefect_api_from_settings()
    if api is None:  # the flow plans and checks
        return None
    plan, mode = _checked_plan(job, start, end, options, dry_run=False)
    try:
        records = job_records(api, plan.job, at_least=len(plan.windows))
    except (httpx.HTTPError, ValueError):
        return None
    if records is None:
        return None
    outcomes = []
    for planned in plan.windows:
        record = find(records, planned.key)
        reason = settled_skip(record, mode, options.get("follow", False))
        if reason is None:
            return None
        outcomes.append(WindowOutcome.skipped(plan.job, planned, reason, record))
    return BackfillReport(job_url=plan.job.page_url, outcomes=outcomes), api.url


def _checked_plan(
    job: str, start: date, end: date, options: dict[str, Any], *, dry_run: bool
) -> tuple[BackfillPlan, Reprocess]:
    """The plan, after every check the flow makes before its first request."""
    mode = check_run_options(
        max_concurrency=options["max_concurrency"],
        reprocess=options["reprocess"],
        follow=options.get("follow", False),
        scale_out=False,
        poll_interval=options.get("poll_interval", 30.0),
        max_wait=options.get("max_wait"),
    )
    settings = CMLSettings.load()
    if options.get("follow") and not dry_run:
        settings.require("api_v2_key")
    ref = JobRef.parse(job).with_host(settings.host)
    return plan_backfill(ref, start, end, options["options"], options["order"]), mode


def run(
    job: str, start: date, end: date, options: dict[str, Any], *, show_progress: bool
) -> tuple[BackfillReport | None, BaseException | None]:
    """Run the flow in this process; returns the report (or the outcomes seen) and the error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cml_tasks.prefect.backfill import cml_backfill, observing

    seen: dict[str, WindowOutcome] = {}  # by window: a duplicate is told again
    notes: list[str] = []
    progress = Progress(
        TextColumn("[bold]backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    bar = progress.add_task("", total=None)

    def note(text: str) -> None:
        """Said on the terminal as the backfill makes it (not only in its log)."""
        notes.append(text)
        progress.console.print(f"Note: {text}", markup=False, highlight=False, soft_wrap=True)

    def observe(outcome: WindowOutcome, done: int, total: int) -> None:
        seen[outcome.window] = outcome
        progress.update(bar, completed=done, total=total, description=_line(outcome))

    with observing(observe, note), progress:
        state = cml_backfill(job=job, start=start, end=end, return_state=True, **options)
    value = state.result(raise_on_failure=False)
    if isinstance(value, BackfillReport):
        return value, None
    error = value if isinstance(value, BaseException) else RuntimeError(str(state.message))
    if not seen:
        return None, error
    outcomes = sorted(
        seen.values(), key=lambda o: o.window_start, reverse=options.get("order") == "newest"
    )
    return BackfillReport(job_url=outcomes[0].job_url, outcomes=outcomes, notes=notes), error


def _line(outcome: WindowOutcome) -> str:
    return f"{outcome.window} {outcome.shown}"


def print_report(report: BackfillReport, *, as_json: bool) -> None:
    if as_json:
        payload = report.model_dump(mode="json")
        payload["summary"] = report.summary()
        typer.echo(json.dumps(payload))
        return
    followed = any(o.run_status for o in report.outcomes)
    header = ["window", "environment", "result", "engine id / error"]
    if followed:
        header += ["CML status", "run page"]
    rows = []
    for o in report.outcomes:
        env = " ".join(f"{k}={v}" for k, v in o.environment.items())
        detail = o.error or o.engine_id or o.reason or ""
        row = [o.window, env, o.shown, detail]
        if followed:
            row += [o.run_status or "", o.run_url or ""]
        rows.append(row)
    typer.echo(f"Backfill of {printable(report.job_url)}")
    typer.echo(columns(header, rows))
    typer.echo(report.summary())
    for note in report.notes:
        typer.echo(f"Note: {note}")


def has_unknown(report: BackfillReport) -> bool:
    return any(o.result is WindowResult.OUTCOME_UNKNOWN for o in report.outcomes)


def is_input_error(error: BaseException) -> bool:
    """A CMLError raised before any window ran (bad input, settings)."""
    return isinstance(error, CMLError) and not isinstance(error, BackfillFailed)
