"""The work of `cml-jobs backfill --pipeline` and `cml-jobs records --pipeline`: a dry run
without Prefect, the `cml-pipeline-backfill` flow in this process, the grid read back from
the steps' window records; printed as a terminal grid (failures first) or JSON.

Prefect is imported only inside `run` and `recorded`: a dry run and bad input stay fast.
Exit codes are `cli.py`'s to decide: this module does not import it (no import cycle).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import typer

from cml_tasks._text import printable
from cml_tasks.backfill import check_run_options
from cml_tasks.pipeline import (
    Pipeline,
    PipelineFailed,
    PipelinePlan,
    PipelineReport,
    plan_pipeline,
    planned_report,
    recorded_report,
)
from cml_tasks.settings import CMLSettings


def checked_plan(
    path: Path, start: date, end: date, parameters: dict[str, Any], *, dry_run: bool
) -> PipelinePlan:
    """The plan, after every check the flow makes before its first request (a real run
    needs CML_API_V2_KEY: every step is followed to its end). Raises CMLInputError or
    CMLConfigError."""
    check_run_options(
        max_concurrency=parameters["max_concurrency"],
        reprocess=parameters["reprocess"],
        follow=True,
        scale_out=False,
        poll_interval=parameters["poll_interval"],
        max_wait=parameters["max_wait"],
    )
    pipeline = Pipeline.load(path)
    if parameters["from_step"] is not None:
        pipeline.step(parameters["from_step"])
    settings = CMLSettings.load()
    if not dry_run:
        settings.require("api_v2_key")
    return plan_pipeline(pipeline, start, end, settings.host, parameters["order"])


def dry_run(path: Path, start: date, end: date, parameters: dict[str, Any]) -> PipelineReport:
    """Every (window, step) and its environment: no Prefect, no request."""
    return planned_report(checked_plan(path, start, end, parameters, dry_run=True))


def run(
    plan: PipelinePlan, start: date, end: date, parameters: dict[str, Any]
) -> tuple[PipelineReport | None, BaseException | None]:
    """Run the flow in this process: its report (also when a step failed: the flow then
    ends Failed with a `PipelineFailed`, which carries it) and its error, if any."""
    from cml_tasks.prefect.pipeline import cml_pipeline_backfill

    state = cml_pipeline_backfill(
        pipeline=plan.pipeline, start=start, end=end, return_state=True, **parameters
    )
    value = state.result(raise_on_failure=False)
    if isinstance(value, PipelineReport):
        return value, None
    error = value if isinstance(value, BaseException) else RuntimeError(str(state.message))
    return (error.report if isinstance(error, PipelineFailed) else None), error


def recorded(path: Path, start: date, end: date) -> tuple[PipelineReport, bool]:
    """The grid as the window records on the Prefect server tell it (read-only, one listing
    per job), and whether other machines share those records (False on an ephemeral API)."""
    from cml_tasks.prefect.pipeline import read_records
    from cml_tasks.prefect.records import window_records

    pipeline = Pipeline.load(path)
    plan = plan_pipeline(pipeline, start, end, CMLSettings.load().host)
    return recorded_report(plan, read_records(plan)), window_records().shared_api


def print_report(report: PipelineReport, *, as_json: bool) -> None:
    """JSON (one ASCII line), or for a person: the failures with why and their run pages,
    the grid, the summary, and what to run next."""
    failures = report.failure_lines()
    if as_json:
        typer.echo(json.dumps(report.payload()))
    if failures:  # with --json on stderr, for the person watching
        typer.echo("Failed:", err=as_json)
        for line in failures:
            typer.echo(f"  {printable(line)}", err=as_json)
    if as_json:
        return
    typer.echo(report.table())
    typer.echo(printable(report.summary()))
    hint = report.resume_hint()
    if hint:
        typer.echo(printable(hint))
