"""Cancelling a deployed flow run (as the UI does) stops the CML run it follows."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PrefectServer, spawn, stop_process

from cml_tasks.emulator import DEFAULT_V2_KEY, Emulator, RunRecord, default_config

FLOW_FILE = Path(__file__).with_name("e2e_cancel_flow.py")


def eventually(check: Callable[[], object], timeout: float, what: str, log: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; serve log:\n{log.read_text()[-4000:]}")


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
    env = prefect_server.env(CML_API_V2_KEY=DEFAULT_V2_KEY, PYTHONPATH=str(FLOW_FILE.parent))
    serve = spawn([sys.executable, str(FLOW_FILE)], env, log)
    try:
        with prefect_server.as_current_api(), get_client(sync_client=True) as prefect:

            def deployment() -> object:
                try:
                    return prefect.read_deployment_by_name("follow-cml/cancel-e2e")
                except Exception:
                    return None

            found = eventually(deployment, 60, "the served deployment", log)
            flow_run = prefect.create_flow_run_from_deployment(
                found.id,  # type: ignore[attr-defined]
                parameters={"job_url": cml.job_url("alice", "risk-analysis", "211")},
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
