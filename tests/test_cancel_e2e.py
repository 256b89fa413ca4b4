"""Cancelling a deployed flow run (as the UI does) stops the CML run it follows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PrefectServer, spawn, stop_process

from cml_tasks.emulator import DEFAULT_V2_KEY, Emulator, RunRecord, default_config

FLOW_FILE = Path(__file__).with_name("e2e_cancel_flow.py")
REPOSITORY = Path(__file__).resolve().parents[1]


def eventually(check: Callable[[], object], timeout: float, what: str, log: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; serve log:\n{log.read_text()[-4000:]}")


def _serve(prefect_server: PrefectServer, log: Path) -> subprocess.Popen[bytes]:
    pythonpath = f"{FLOW_FILE.parent}{os.pathsep}{REPOSITORY}"
    env = prefect_server.env(CML_API_V2_KEY=DEFAULT_V2_KEY, PYTHONPATH=pythonpath)
    return spawn([sys.executable, str(FLOW_FILE)], env, log)


def _run_served(prefect: Any, deployment: str, parameters: dict[str, Any], log: Path) -> Any:
    """A flow run of a deployment the serve process registers (once it has)."""
    from prefect.exceptions import ObjectNotFound

    def served() -> Any:
        try:
            return prefect.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return None

    found = eventually(served, 60, f"the served deployment {deployment}", log)
    return prefect.create_flow_run_from_deployment(found.id, parameters=parameters)


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator(default_config()) as emu:  # job 211 runs for 60 s
        yield emu


def test_cancelling_the_flow_run_stops_the_cml_run(
    prefect_server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    log = tmp_path / "serve.log"
    serve = _serve(prefect_server, log)
    try:
        with prefect_server.as_current_api(), get_client(sync_client=True) as prefect:
            flow_run = _run_served(
                prefect,
                "follow-cml/cancel-e2e",
                {"job_url": cml.job_url("alice", "risk-analysis", "211")},
                log,
            )

            def running() -> RunRecord | None:
                return next((r for r in cml.runs() if r["status"] == "ENGINE_RUNNING"), None)

            run = eventually(running, 60, "the CML run to be RUNNING", log)
            assert isinstance(run, dict)
            prefect.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))

            def stopped() -> bool:
                record = next(r for r in cml.runs() if r["id"] == run["id"])
                return record["status"] == "ENGINE_STOPPED"

            eventually(stopped, 30, "the CML run to be STOPPED", log)
            stops = [r for r in cml.requests() if r["endpoint"] == "v2.stop_run"]
            assert stops and stops[0]["path"].endswith(f"/runs/{run['id']}:stop")

            def cancelled() -> bool:
                state = prefect.read_flow_run(flow_run.id).state
                return state is not None and state.is_cancelled()

            eventually(cancelled, 30, "the flow run to be Cancelled", log)
        assert len(cml.runs()) == 1
    finally:
        stop_process(serve)


def test_cancelling_a_following_backfill_stops_each_window_run(
    prefect_server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    log = tmp_path / "serve.log"
    serve = _serve(prefect_server, log)
    try:
        with prefect_server.as_current_api(), get_client(sync_client=True) as prefect:
            flow_run = _run_served(
                prefect,
                "cml-backfill/cancel-e2e",
                {
                    "job": cml.job_url("alice", "risk-analysis", "211"),
                    "start": "2017-01-01",
                    "end": "2017-02-28",
                    "follow": True,
                    "poll_interval": 0.5,
                    "project_limit": 0,
                },
                log,
            )

            def both_running() -> list[RunRecord]:
                running = [r for r in cml.runs() if r["status"] == "ENGINE_RUNNING"]
                return running if len(running) == 2 else []

            runs = eventually(both_running, 90, "both windows' CML runs to be RUNNING", log)
            assert isinstance(runs, list)
            prefect.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))

            def all_stopped() -> bool:
                return all(r["status"] == "ENGINE_STOPPED" for r in cml.runs())

            eventually(all_stopped, 30, "every window's CML run to be STOPPED", log)
            stopped = {
                r["path"].rsplit("/", 1)[-1]
                for r in cml.requests()
                if r["endpoint"] == "v2.stop_run"
            }
            assert stopped == {f"{run['id']}:stop" for run in runs}
        assert sorted(r["environment"]["START_DATE"] for r in cml.runs()) == [
            "2017-01-01",
            "2017-02-01",
        ]
    finally:
        stop_process(serve)
