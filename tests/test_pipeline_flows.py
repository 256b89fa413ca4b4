"""The pipeline flows end to end on a real `prefect server start` and the emulator: the example
in `flows/` as a user runs it, the `monthly-pipeline` deployment served with its retry (on
SQLite and PostgreSQL), a step that shares its job and window with a plain backfill, and
independent steps at once.

The emulator's record of runs is the judge.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import PrefectServer, machine_env, spawn, stop_process

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, default_config
from cml_tasks.emulator._state import RunRecord

REPOSITORY = Path(__file__).resolve().parents[1]
KEYS = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}


@pytest.fixture
def cml() -> Iterator[Emulator]:
    """Runs that end as they are created: a followed step needs no poll."""
    with Emulator(default_config(time_scale=0)) as emulator:
        yield emulator


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both keys for flows run in this process (and a fresh shared poller for them)."""
    from cml_tasks.prefect import tasks

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    tasks.shared_poller.cache_clear()
    yield
    tasks.shared_poller.cache_clear()


def _runs(cml: Emulator) -> Counter[str]:
    return Counter(run["job_id"] for run in cml.runs())


def _user_code_lines(path: Path) -> int:
    """Lines of code: no blank line, comment or module docstring."""
    text = path.read_text()
    body = text.split('"""', 2)[2] if text.startswith('"""') else text
    return sum(1 for line in body.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_the_example_pipeline_backfills_as_its_docstring_says(
    prefect_server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    example = REPOSITORY / "flows" / "risk_pipeline.py"
    lines = _user_code_lines(example)
    assert lines <= 25
    assert f"in {lines} lines of code" in (REPOSITORY / "README.md").read_text()
    project = cml.url + "/alice/risk-analysis"
    env = machine_env(prefect_server, tmp_path, "laptop", CML_PROJECT_URL=project, **KEYS)
    command = [sys.executable, str(example), "2017-01-01", "2017-02-28"]
    for _ in ("first", "rerun"):
        done = subprocess.run(
            command,
            cwd=tmp_path / "laptop" / "work",
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert _runs(cml) == Counter({"208": 2, "212": 2, "213": 2})
    scores = [run["environment"] for run in cml.runs() if run["job_id"] == "213"]
    assert sorted(env["START_DATE"] for env in scores) == ["2017-01-01", "2017-02-01"]
    assert {env["REGION"] for env in scores} == {"eu"}
    # train started only after ingest of the same month, score after train
    order = [(run["environment"]["START_DATE"], run["job_id"]) for run in cml.runs()]
    for month in ("2017-01-01", "2017-02-01"):
        assert [job for start, job in order if start == month] == ["208", "212", "213"]


def _served(server: PrefectServer, name: str, log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 90
    with server.as_current_api(), get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)


def _final(server: PrefectServer, run_id: object, log: Path) -> object:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with server.as_current_api(), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)  # type: ignore[arg-type]
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)


def test_the_served_monthly_pipeline_runs_last_month_once_and_its_retry_starts_nothing(
    server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    """The deployment as `deployments/serve.py` serves it, a run scheduled for April (last
    month: March), and a retry of that same flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import AwaitingRetry, Scheduled

    env = server.env(
        CML_PROJECT_URL=cml.url + "/alice/risk-analysis",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        **KEYS,
    )
    log = tmp_path / "serve.log"
    served = spawn([sys.executable, "deployments/serve.py", "monthly-pipeline"], env, log)
    try:
        _served(server, "cml-pipeline-run/monthly-pipeline", log)
        with server.as_current_api(), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("cml-pipeline-run/monthly-pipeline")
            (schedule,) = deployment.schedules
            assert (schedule.schedule.cron, schedule.schedule.timezone) == (
                "0 2 1 * *",
                "Europe/Berlin",
            )
            scheduled = datetime(2017, 4, 1, 2, tzinfo=ZoneInfo("Europe/Berlin"))
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, state=Scheduled(scheduled_time=scheduled)
            )
        first = _final(server, flow_run.id, log)
        with server.as_current_api(), get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        retried = _final(server, flow_run.id, log)
    finally:
        stop_process(served)
        with server.as_current_api(), get_client(sync_client=True) as client:
            client.delete_deployment(deployment.id)
    assert first.state.is_completed(), log.read_text()[-3000:]  # type: ignore[attr-defined]
    assert first.name == "risk-monthly 2017-03"  # type: ignore[attr-defined]
    assert sorted(run.name for run in task_runs) == [
        "ingest 2017-03",
        "score 2017-03",
        "train 2017-03",
    ]
    assert retried.state.is_completed() and retried.run_count == 2  # type: ignore[attr-defined]
    assert _runs(cml) == Counter({"208": 1, "212": 1, "213": 1})
    assert {run["environment"]["START_DATE"] for run in cml.runs()} == {"2017-03-01"}


@pytest.mark.usefixtures("keys")
def test_a_step_shares_its_job_and_window_with_a_plain_backfill(
    prefect_server: PrefectServer, cml: Emulator
) -> None:
    from cml_tasks.prefect import Pipeline, Step, cml_backfill, cml_pipeline_backfill

    jobs = cml.url + "/alice/risk-analysis/jobs"
    pipeline = Pipeline(
        "shared",
        steps=[Step("ingest", f"{jobs}/208"), Step("train", f"{jobs}/212", after=["ingest"])],
    )
    with prefect_server.as_current_api():
        cml_backfill(job=f"{jobs}/208", start=date(2017, 1, 1), end=date(2017, 2, 28))
        report = cml_pipeline_backfill(
            pipeline=pipeline, start=date(2017, 1, 1), end=date(2017, 3, 31), poll_interval=0.2
        )
        again = cml_backfill(job=f"{jobs}/208", start=date(2017, 1, 1), end=date(2017, 3, 31))
    assert _runs(cml) == Counter({"208": 3, "212": 3})  # ingest started only March
    assert report.summary() == "3 windows x 2 steps: 6 succeeded"
    names = _step_event_names(prefect_server, "train")
    assert {name.split(" run ")[0] for name in names} >= {
        "train: risk-analysis/212 2017-01",
        "train: risk-analysis/212 2017-03",
    }
    assert [o.result.value for o in again.outcomes] == ["skipped"] * 3


@pytest.mark.usefixtures("keys")
def test_independent_steps_run_at_once_and_a_failure_stops_only_its_downstream(
    prefect_server: PrefectServer,
) -> None:
    from cml_tasks.emulator import OutcomeRule
    from cml_tasks.prefect import Pipeline, Step, cml_pipeline_backfill

    with Emulator(default_config(time_scale=1)) as cml:
        jobs = cml.url + "/alice/risk-analysis/jobs"
        cml.set_outcomes(  # each region's run lasts 8 s
            "212",
            [
                OutcomeRule(when={"REGION": "eu"}, outcome="succeeded", running_seconds=8),
                OutcomeRule(when={"REGION": "us"}, outcome="failed", running_seconds=8),
            ],
        )
        pipeline = Pipeline(
            "regions",
            steps=[
                Step("eu", f"{jobs}/212", environment={"REGION": "eu"}),
                Step("us", f"{jobs}/212", environment={"REGION": "us"}),
                Step("eu-report", f"{jobs}/213", after=["eu"]),
                Step("all-report", f"{jobs}/208", after=["eu", "us"]),
            ],
        )
        with prefect_server.as_current_api():
            state = cml_pipeline_backfill(
                pipeline=pipeline,
                start=date(2017, 1, 1),
                end=date(2017, 1, 31),
                poll_interval=0.2,
                return_state=True,
            )
            runs = cml.runs()
            cml.set_outcomes("212", [])  # fixed: a `failed` rerun starts us, then all-report
            rerun = cml_pipeline_backfill(
                pipeline=pipeline,
                start=date(2017, 1, 1),
                end=date(2017, 1, 31),
                poll_interval=0.2,
                reprocess="failed",
            )
            after = Counter(run["job_id"] for run in cml.runs())
    assert state.is_failed()
    failed = state.result(raise_on_failure=False)
    assert "1 step failed or unknown" in str(failed)
    markdown = _artifact(prefect_server, state.state_details.flow_run_id)
    summary, failed_title, failures, resume, grid = markdown.split("\n\n")[:5]
    counts = "1 window x 4 steps: 2 succeeded, 1 failed, 1 not reached"
    assert summary == f"### Pipeline regions: {counts}"
    assert failed_title == "**Failed**:"
    assert failures.startswith("- 2017-01 us: failed: CML run failed (http")
    assert "--reprocess failed" in resume and "--from-step" in resume
    assert grid.splitlines()[0] == "| window | eu | us | eu-report | all-report |"
    assert "| 2017-01 | [succeeded](http" in grid and "| not reached |" in grid
    by_job = Counter(run["job_id"] for run in runs)
    assert by_job == Counter({"212": 2, "213": 1})  # all-report not reached
    assert rerun.summary() == "1 window x 4 steps: 4 succeeded"
    assert after == Counter({"212": 3, "213": 1, "208": 1})  # eu and eu-report not again
    eu, us = sorted(
        (r for r in runs if r["job_id"] == "212"), key=lambda r: r["environment"]["REGION"]
    )
    assert abs(_created(eu) - _created(us)) < 8  # one started while the other ran


def _created(run: RunRecord) -> float:
    return datetime.fromisoformat(run["created_at"].replace("Z", "+00:00")).timestamp()


def _step_event_names(server: PrefectServer, step: str) -> set[str]:
    """The resource names of the `cml.run.succeeded` events of a pipeline step (the server persists
    events in batches: asked again for up to 30 s)."""
    import httpx

    from cml_tasks.prefect._adapter import flush_to_api

    with server.as_current_api():
        flush_to_api()
    body = {"filter": {"event": {"name": ["cml.run.succeeded"]}}, "limit": 50}
    deadline = time.monotonic() + 30
    while True:
        events = httpx.post(f"{server.api_url}/events/filter", json=body, timeout=30).json()
        names = {
            event["resource"]["prefect.resource.name"]
            for event in events["events"]
            if event["resource"].get("cml.step") == step
        }
        if len(names) >= 3 or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def _artifact(server: PrefectServer, flow_run_id: object) -> str:
    """The markdown of the flow run's one artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with server.as_current_api(), get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])  # type: ignore[list-item]
            )
        )
    assert isinstance(artifact.data, str)
    return artifact.data
