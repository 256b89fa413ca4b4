"""Many machines, one truth: processes with their own PREFECT_HOME, working directory and
temporary storage ("machines") share one `prefect server start` - on PostgreSQL and on SQLite -
and each window is started once. The emulator's record of runs is the judge."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import PrefectServer, machine_env, server_records, spawn, stop_process

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault

REPOSITORY = Path(__file__).resolve().parents[1]
CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))
YEAR = ["--from", "2017-01-01", "--to", "2017-12-31", "--every", "month"]
LIMIT = "cml-project:alice:risk-analysis"


@pytest.fixture(params=["postgresql", "sqlite"])
def server(request: pytest.FixtureRequest) -> PrefectServer:
    """The shared Prefect server, on each database; the project's limit out of the way (a
    killed machine's slots come back only when their lease ends)."""
    from prefect.client.orchestration import get_client

    name = "prefect_server_pg" if request.param == "postgresql" else "prefect_server"
    found: PrefectServer = request.getfixturevalue(name)
    with found.as_current_api(), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LIMIT, 50)
    return found


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def _keys(v2: bool) -> dict[str, str]:
    keys = {"CML_API_KEY": DEFAULT_V1_KEY}
    if v2:
        keys["CML_API_V2_KEY"] = DEFAULT_V2_KEY
    return keys


def _backfill(
    server: PrefectServer, root: Path, machine: str, url: str, *args: str, v2: bool = False
) -> subprocess.Popen[str]:
    """`cml-jobs backfill url args --json` on its own machine."""
    env = machine_env(server, root, machine, **_keys(v2))
    return subprocess.Popen(
        [CML_JOBS, "backfill", url, *args, "--json"],
        cwd=root / machine / "work",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _report(process: subprocess.Popen[str], timeout: float = 150) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode in (0, 7), f"exit {process.returncode}:\n{out}\n{err[-3000:]}"
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def _starts(cml: Emulator, job_id: str = "208") -> Counter[str]:
    return Counter(
        run["environment"]["START_DATE"] for run in cml.runs() if run["job_id"] == job_id
    )


def _months(count: int) -> Counter[str]:
    return Counter({f"2017-{m:02d}-01": 1 for m in range(1, count + 1)})


def test_two_machines_backfill_the_same_year_at_once(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="latency", seconds=0.3))  # let them overlap
    url = cml.job_url("alice", "risk-analysis", "208")
    machines = [_backfill(server, tmp_path, name, url, *YEAR) for name in ("a", "b")]
    reports = [_report(process) for process in machines]
    assert _starts(cml) == _months(12)
    results = Counter(o["result"] for report in reports for o in report["outcomes"])
    assert results == Counter({"started": 12, "skipped": 12})


def test_a_served_schedule_and_a_backfill_elsewhere_start_a_window_once(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    url = cml.job_url("alice", "risk-analysis", "208")
    env = machine_env(
        server,
        tmp_path,
        "worker",
        CML_JOB_URL=url,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        **_keys(False),
    )
    log = tmp_path / "serve.log"
    # `weekly`: the session's SQLite server also has `monthly` as `prefect deploy` made it
    # for other tests (with pull steps that a served run cannot follow).
    serving = spawn([sys.executable, "deployments/serve.py", "weekly"], env, log)
    try:
        deadline = time.monotonic() + 60
        while "being served" not in log.read_text():  # registered, and polling for runs
            assert serving.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        with server.as_current_api(), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("cml-window-run/weekly")
            flow_run = client.create_flow_run_from_deployment(  # Monday 9 January, 06:00 UTC
                deployment.id,
                state=Scheduled(scheduled_time=datetime(2017, 1, 9, 6, tzinfo=ZoneInfo("UTC"))),
            )
            week = ["--from", "2017-01-02", "--to", "2017-01-08", "--every", "week"]
            laptop = _backfill(server, tmp_path, "laptop", url, *week)
            report = _report(laptop)
            deadline = time.monotonic() + 120
            while not (state := client.read_flow_run(flow_run.id).state) or not state.is_final():
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
    finally:
        stop_process(serving)
        with server.as_current_api(), get_client(sync_client=True) as client:
            # The deployment now names this test's emulator: leave no such deployment behind.
            client.delete_deployment(client.read_deployment_by_name("cml-window-run/weekly").id)
    assert state.is_completed(), log.read_text()[-3000:]
    assert _starts(cml) == Counter({"2017-01-02": 1})
    assert [o["result"] for o in report["outcomes"]] in (["started"], ["skipped"])


def test_a_flow_run_retried_in_a_fresh_container_starts_nothing_again(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    from cml_tasks.prefect.window_run import cml_window_run

    url = cml.job_url("alice", "risk-analysis", "208")
    parameters = {"job": url, "window_start": "2017-01-01"}
    with server.as_current_api(), get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(cml_window_run, parameters=parameters)
    script = (
        "import sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.flow_engine import run_flow\n"
        "from cml_tasks.prefect.window_run import cml_window_run\n"
        "with get_client(sync_client=True) as client:\n"
        "    run = client.read_flow_run(sys.argv[1])\n"
        "run_flow(cml_window_run, flow_run=run, parameters=run.parameters)\n"
    )
    for container in ("first", "retry"):
        env = machine_env(server, tmp_path, container, **_keys(False))
        done = subprocess.run(
            [sys.executable, "-c", script, str(flow_run.id)],
            cwd=tmp_path / container / "work",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        with server.as_current_api(), get_client(sync_client=True) as client:
            if container == "first":
                client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
            final = client.read_flow_run(flow_run.id)
    assert final.state is not None and final.state.is_completed()
    assert final.run_count == 2
    assert _starts(cml) == Counter({"2017-01-01": 1})


def _starting(server: PrefectServer, job_url: str) -> int:
    """How many of the job's window records say `starting` right now."""
    from cml_tasks.backfill import WindowStatus

    records = server_records(server, job_url).values()
    return sum(1 for record in records if record.status is WindowStatus.STARTING)


def test_a_machine_killed_mid_start_leaves_each_window_once_or_reported(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    """Two killed machines at once: job 208 with the v2 key, job 211 with v1 only. Each had
    two starts in flight (slow answers, runs created). Other machines resume both."""
    cml.inject(Fault(endpoint="v1.start", kind="latency", seconds=6.0))
    v2_url = cml.job_url("alice", "risk-analysis", "208")
    v1_url = cml.job_url("alice", "risk-analysis", "211")
    args = [*YEAR, "--max-concurrency", "2"]
    in_flight = 2
    killing = {  # each machine is killed once its own two starts are in flight
        v2_url: _backfill(server, tmp_path, "a1", v2_url, *args, v2=True),
        v1_url: _backfill(server, tmp_path, "a2", v1_url, *args),
    }
    deadline = time.monotonic() + 60
    while killing:
        assert time.monotonic() < deadline, "the first machines never started their windows"
        for url, process in list(killing.items()):
            if _starting(server, url) >= in_flight:
                time.sleep(1.0)  # a claim writes `starting` just before its call goes out
                process.send_signal(signal.SIGKILL)
                process.wait()
                del killing[url]
        time.sleep(0.2)
    while len(cml.runs()) < 2 * in_flight:  # the slow answers land after the kill
        assert time.monotonic() < deadline + 30
        time.sleep(0.2)
    cml.clear_faults()
    resumed = [
        _backfill(server, tmp_path, "b1", v2_url, *args, v2=True),
        _backfill(server, tmp_path, "b2", v1_url, *args),
    ]
    v2_report, v1_report = (_report(process) for process in resumed)
    assert _starts(cml, "208") == _months(12)
    adopted = [o for o in v2_report["outcomes"] if "adopted run" in (o["reason"] or "")]
    assert len(adopted) == in_flight, [o for o in v2_report["outcomes"] if o["result"] != "skipped"]
    # v1 only: the two in-flight windows are reported unknown and never started again.
    unknown = [o["window"] for o in v1_report["outcomes"] if o["result"] == "outcome_unknown"]
    assert len(unknown) == in_flight
    assert sum(_starts(cml, "211").values()) == 12
    assert set(_starts(cml, "211").values()) == {1}


def test_a_run_started_through_v2_before_the_backfill_is_adopted(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    from cml_tasks import CMLClient, CMLSettings

    url = cml.job_url("alice", "risk-analysis", "208")
    settings = CMLSettings.load(host=None, api_key=DEFAULT_V1_KEY, api_v2_key=DEFAULT_V2_KEY)
    with CMLClient(settings) as client:
        by_hand = client.create_run(url, {"START_DATE": "2017-03-01", "END_DATE": "2017-03-31"})
    process = _backfill(
        server, tmp_path, "a", url, "--from", "2017-01-01", "--to", "2017-04-30", v2=True
    )
    report = _report(process)
    assert _starts(cml) == _months(4)
    (march,) = [o for o in report["outcomes"] if o["window"] == "2017-03"]
    assert march["engine_id"] == by_hand.id
    assert "adopted run" in march["reason"] and march["adopted"] is True
    assert report["summary"] == "4 windows: 3 started, 1 adopted"  # not "4 started"
