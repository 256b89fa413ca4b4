"""`cml-jobs demo`: the main job - a year of monthly windows backfilled and a scheduled window
run, watched in Prefect - then a three-step pipeline, on the built-in CML emulator and a
temporary Prefect server.

Nothing to set up: the emulator answers as CML (user alice, her documented keys, jobs 208,
212 and 213), `prefect server start` runs on a free port with a temporary PREFECT_HOME.
January is started twice on purpose (by the backfill, then by the run its schedule makes on
1 February) to show that the second start starts nothing. The pipeline (ingest, train,
score) runs over three months with `train` failing for February, so the grid shows the
failure and the step after it not reached; once fixed, the same command completes only what
is missing. With `ui=True` both servers stay up for the Prefect UI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cml_tasks.prefect_rest import FILE_LEASE_STORAGE

if TYPE_CHECKING:
    from cml_tasks.emulator import Emulator

STARTUP_SECONDS = 90.0
SERVER_SETTINGS = {
    # The README's recommendation for backfills: task-run states in batches (a third of the
    # server's CPU per task run), the UI at most a second behind.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # Concurrency leases on disk: a restarted server still knows who holds a project slot.
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": FILE_LEASE_STORAGE,
}
"""The demo's Prefect server settings, as the README recommends them for a real server."""


def run_demo(*, ui: bool) -> None:
    """Backfill 2017 month by month, run the schedule's window for January, print both."""
    from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator

    os.environ["CML_API_KEY"] = DEFAULT_V1_KEY
    os.environ["CML_API_V2_KEY"] = DEFAULT_V2_KEY  # a pipeline follows its steps' runs
    os.environ.pop("CML_HOST", None)
    with Emulator() as cml, _prefect_server(ui=ui) as api_url:
        url = cml.job_url("alice", "risk-analysis", "208")
        typer.echo(f"CML emulator at {cml.url} (user alice, her documented API keys)")
        typer.echo(f"Prefect server at {api_url.removesuffix('/api')} (temporary)\n")
        _backfill(url)
        _scheduled_january(url)
        typer.echo(f"\nCML was asked for {len(cml.runs())} runs: one per month of 2017.")
        _pipeline(cml)
        if ui:
            typer.echo(f"\nThe Prefect UI: {api_url.removesuffix('/api')}/runs  (Ctrl-C to stop)")
            _wait_for_interrupt()


def _backfill(url: str) -> None:
    from cml_tasks.backfill_cli import print_report
    from cml_tasks.prefect.backfill import cml_backfill

    typer.echo(f"$ cml-jobs backfill {url} --from 2017-01-01 --to 2017-12-31 --every month")
    report = cml_backfill(job=url, start=date(2017, 1, 1), end=date(2017, 12, 31))
    print_report(report, as_json=False)


def _scheduled_january(url: str) -> None:
    """The monthly deployment's flow for January, as its schedule runs it on 1 February:
    already started. The window is named (`window_start`) rather than the flow run scheduled
    in 2017, which the UI would show as years late."""
    from cml_tasks.prefect.window_run import cml_window_run
    from cml_tasks.window_options import WindowOptions

    typer.echo("\nThe monthly deployment's run for January (its schedule's run of 1 February):")
    options = WindowOptions(timezone="Europe/Berlin")
    run = cml_window_run(job=url, window_start=date(2017, 1, 1), options=options)
    typer.echo(f"  nothing started: January already has run {run.engine_id} (from the backfill)")


def _pipeline(cml: Emulator) -> None:
    """Ingest, train, score over three months; train fails for February, then is fixed."""
    from cml_tasks.emulator import OutcomeRule
    from cml_tasks.pipeline import Pipeline, PipelineFailed, PipelineReport, Step
    from cml_tasks.pipeline_cli import print_report
    from cml_tasks.prefect.pipeline import cml_pipeline_backfill

    jobs = f"{cml.url}/alice/risk-analysis/jobs"
    pipeline = Pipeline(
        "risk-monthly",
        steps=[
            Step("ingest", f"{jobs}/208"),
            Step("train", f"{jobs}/212", after=["ingest"]),
            Step("score", f"{jobs}/213", after=["train"]),
        ],
    )
    february = OutcomeRule(when={"START_DATE": "2017-02-01"}, outcome="failed")
    cml.set_outcomes("212", [february])
    command = "cml-jobs backfill --pipeline risk_pipeline.yaml --from 2017-01-01 --to 2017-03-31"
    typer.echo(
        "\nA pipeline: ingest (job 208), then train (212), then score (213), per month; "
        "train fails for February. Ingest's months were started by the backfill above: the "
        "pipeline follows those runs instead of starting them again."
    )
    for attempt in ("first", "fixed"):
        if attempt == "fixed":
            cml.set_outcomes("212", [])
            typer.echo("\nThe train job is fixed in CML; the same command again:")
        typer.echo(f"\n$ {command}")
        before = len(cml.runs())
        state = cml_pipeline_backfill(
            pipeline=pipeline,
            start=date(2017, 1, 1),
            end=date(2017, 3, 31),
            poll_interval=0.5,
            return_state=True,
        )
        value = state.result(raise_on_failure=False)
        report = value.report if isinstance(value, PipelineFailed) else value
        if not isinstance(report, PipelineReport):
            raise SystemExit(f"the pipeline backfill failed: {value}")
        print_report(report, as_json=False)
        typer.echo(f"CML runs started: {len(cml.runs()) - before}")


@contextmanager
def _prefect_server(*, ui: bool) -> Iterator[str]:
    """`prefect server start` on a free port with a temporary home; this process uses it."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cml_tasks.prefect._adapter import flush_to_api

    home = Path(tempfile.mkdtemp(prefix="cml-demo-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        # The UI asks this API, not port 4200's (another server there would show its data).
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **SERVER_SETTINGS,
    }
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((home / "server.log").read_text()[-3000:])
            time.sleep(0.3)
        with temporary_settings({PREFECT_API_URL: api_url}):
            try:
                yield api_url
            finally:
                flush_to_api()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("Stopped.")
