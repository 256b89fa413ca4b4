"""Scale-out backfill on a real `prefect server start`: one `cml-window-run` flow run per
window, dispatched with an idempotency key per window and run by a real process worker."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import PREFECT, PrefectServer, spawn, stop_process

from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator

REPOSITORY = Path(__file__).resolve().parents[1]
DEPLOYMENT = "cml-window-run/monthly"
MONTHLY = ["--name", "monthly"]


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def _backfill(server: PrefectServer, url: str, end: date) -> Any:
    from cml_tasks.prefect.backfill import cml_backfill

    with server.as_current_api():
        return cml_backfill(
            job=url,
            start=date(2017, 1, 1),
            end=end,
            scale_out=True,
            deployment=DEPLOYMENT,
            return_state=True,
        ).result()


def _wait_for_runs(cml: Emulator, count: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while len(cml.runs()) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(cml.runs())} CML runs after 90 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def _deploy_monthly(env: dict[str, str]) -> None:
    """`prefect deploy` of the monthly window deployment from `deployments/prefect.yaml`."""
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", *MONTHLY],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr


@pytest.mark.usefixtures("process_pool")
def test_scale_out_dispatches_each_window_once(
    prefect_server: PrefectServer, cml: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    url = cml.job_url("alice", "risk-analysis", "208")
    env = prefect_server.env(
        CML_API_KEY=DEFAULT_V1_KEY, CML_JOB_URL=url, PREFECT_WORKER_QUERY_SECONDS="1"
    )
    _deploy_monthly(env)
    from prefect.client.orchestration import get_client

    with prefect_server.as_current_api(), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    limit = deployment.global_concurrency_limit
    assert limit is not None and limit.limit == 4  # `concurrency_limit: 4` bounds the runs

    report = _backfill(prefect_server, url, date(2017, 3, 31))
    assert [o.result for o in report.outcomes] == ["dispatched"] * 3
    log = tmp_path / "worker.log"
    worker = spawn([PREFECT, "worker", "start", "--pool", "cml-process"], env, log)
    try:
        _wait_for_runs(cml, 3, log)
        time.sleep(2)  # let the flow runs report Completed
        again = _backfill(prefect_server, url, date(2017, 3, 31))
    finally:
        stop_process(worker)
    assert [o.result for o in again.outcomes] == ["skipped"] * 3, again.outcomes
    starts = Counter(run["environment"]["START_DATE"] for run in cml.runs())
    assert starts == Counter({"2017-01-01": 1, "2017-02-01": 1, "2017-03-01": 1})
    assert sorted(run["environment"]["END_DATE"] for run in cml.runs()) == [
        "2017-01-31",
        "2017-02-28",
        "2017-03-31",
    ]


@pytest.mark.usefixtures("process_pool")
def test_scale_out_with_a_saved_credentials_block_dispatches(
    prefect_server: PrefectServer, cml: Emulator
) -> None:
    """Scale-out with the credentials in a saved block (no key in any environment): each
    window's flow run is created with a reference to the block."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from cml_tasks.prefect.backfill import cml_backfill
    from cml_tasks.prefect.blocks import CMLCredentials

    url = cml.job_url("alice", "risk-analysis", "208")
    env = prefect_server.env(CML_JOB_URL=url)
    _deploy_monthly(env)
    with prefect_server.as_current_api():
        CMLCredentials(api_key=DEFAULT_V1_KEY).save("scale-out-block", overwrite=True)
        block = CMLCredentials.load("scale-out-block")
        state = cml_backfill(
            job=url,
            start=date(2017, 1, 1),
            end=date(2017, 1, 31),
            scale_out=True,
            deployment=DEPLOYMENT,
            return_state=True,
            credentials=block,
        )
        with get_client(sync_client=True) as client:  # no worker will run it: remove it
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            for run in client.read_flow_runs(deployment_filter=only):
                if run.state is not None and run.state.is_scheduled():
                    client.delete_flow_run(run.id)
    assert state.is_completed(), state.message
    assert [o.result for o in state.result().outcomes] == ["dispatched"]
