"""Backfills that follow each CML run to its end (API v2), on the emulator and a real Prefect API.

Runs are counted, and their lifetimes read, from the emulator itself (`emu.runs()`, API v2
`created_at`/`finished_at`), never from our logs or the wall clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from itertools import pairwise
from typing import Any

import pytest
from conftest import record_writes_refused
from typer.testing import CliRunner

from cml_tasks.backfill import WindowStatus, plan_backfill
from cml_tasks.cli import ExitCode, app
from cml_tasks.client import CMLClient
from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, default_config
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.settings import CMLSettings

POLL = 0.05
LIMIT = "cml-project:alice:risk-analysis"


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch, no_retry_waits: None) -> Iterator[Emulator]:
    """An emulator whose runs last about a second (job 208: 0.3 s to start, 0.7 s running),
    both keys set, fast client retries, and a fresh shared poller."""
    from cml_tasks.prefect import tasks

    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    tasks.shared_poller.cache_clear()
    with Emulator(default_config(time_scale=0.7)) as cml:
        yield cml
    tasks.shared_poller.cache_clear()


@pytest.fixture(autouse=True)
def _roomy_project_limit(prefect_api: None) -> None:
    _set_project_limit(50)


def _set_project_limit(size: int) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LIMIT, size)


def _backfill(emu: Emulator, start: str, end: str, job: str = "208", **options: Any) -> Any:
    from cml_tasks.prefect.backfill import cml_backfill

    options.setdefault("poll_interval", POLL)
    options.setdefault("project_limit", 0)  # slots are slow on SQLite: only where tested
    return cml_backfill(
        job=emu.job_url("alice", "risk-analysis", job),
        start=date.fromisoformat(start),
        end=date.fromisoformat(end),
        follow=True,
        return_state=True,
        **options,
    )


def _starts(emu: Emulator) -> Counter[str]:
    return Counter(run["environment"]["START_DATE"] for run in emu.runs())


def _months(first: int, last: int) -> set[str]:
    return {f"2017-{m:02d}-01" for m in range(first, last + 1)}


def _v2_runs(emu: Emulator, job: str = "208") -> list[JobRun]:
    settings = CMLSettings.load(host=None, api_v2_key=DEFAULT_V2_KEY)
    with CMLClient(settings) as client:
        return list(client.list_runs(emu.job_url("alice", "risk-analysis", job)))


def _most_active_at_once(runs: list[JobRun]) -> int:
    """The largest number of runs alive together, from CML's own created/finished times."""
    events: list[tuple[datetime, int]] = []
    for run in runs:
        assert run.created_at is not None and run.finished_at is not None, run
        events += [(run.created_at, 1), (run.finished_at, -1)]
    active = most = 0
    for _, step in sorted(events):  # at a tie, an end (-1) sorts before a start (+1)
        active += step
        most = max(most, active)
    return most


def _records(emu: Emulator, start: date, end: date) -> list[Any]:
    from cml_tasks.prefect.records import window_records

    job = JobRef.parse(emu.job_url("alice", "risk-analysis", "208"))
    records = window_records()
    return [records.read(p.key) for p in plan_backfill(job, start, end).windows]


def test_every_window_succeeds_through_v2(emu: Emulator) -> None:
    state = _backfill(emu, "2017-01-01", "2017-04-30", max_concurrency=4)
    assert state.is_completed(), state.message
    report = state.result()
    assert [o.result for o in report.outcomes] == [WindowStatus.SUCCEEDED] * 4
    assert {o.run_status for o in report.outcomes} == {"succeeded"}
    runs = {run["id"]: run for run in emu.runs()}
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 4), 1))
    assert {run["api"] for run in runs.values()} == {"v2"}
    for outcome in report.outcomes:
        assert outcome.engine_id in runs
        assert outcome.run_url == f"{outcome.job_url}/runs/{outcome.engine_id}"
    records = _records(emu, date(2017, 1, 1), date(2017, 4, 30))
    assert {r.status for r in records} == {WindowStatus.SUCCEEDED}
    # Resumed: nothing left to do, nothing started.
    again = _backfill(emu, "2017-01-01", "2017-04-30").result()
    assert again.count("skipped") == 4
    assert len(emu.runs()) == 4


def test_failed_runs_are_recorded_and_reprocess_failed_reruns_them(emu: Emulator) -> None:
    state = _backfill(emu, "2017-01-01", "2017-03-31", job="209", max_concurrency=3)
    assert state.is_failed()
    assert "3 of 3 windows failed" in str(state.message)
    for month in ("2017-01", "2017-02", "2017-03"):
        assert f"{month}: run failed" in str(state.message)
    assert Counter(r["environment"]["START_DATE"] for r in emu.runs()) == Counter(
        dict.fromkeys(_months(1, 3), 1)
    )

    missing = _backfill(emu, "2017-01-01", "2017-03-31", job="209")
    assert missing.is_completed()  # `missing` leaves finished runs alone, failed or not
    assert len(emu.runs()) == 3

    rerun = _backfill(emu, "2017-01-01", "2017-03-31", job="209", reprocess="failed")
    assert rerun.is_failed()
    assert len(emu.runs()) == 6
    assert Counter(r["environment"]["START_DATE"] for r in emu.runs()) == Counter(
        dict.fromkeys(_months(1, 3), 2)
    )


def test_failed_run_outcome_carries_status_and_link(emu: Emulator) -> None:
    from prefect.client.orchestration import get_client

    state = _backfill(emu, "2017-01-01", "2017-01-31", job="209")
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    # keyed by job and range, so each backfill keeps its own report
    (table,) = [
        a for a in artifact if a.key == "cml-backfill-risk-analysis-209-2017-01-01-2017-01-31"
    ]
    (run,) = emu.runs()
    assert "failed" in str(table.data) and f"/runs/{run['id']}" in str(table.data)


def test_project_limit_bounds_active_runs(emu: Emulator) -> None:
    _set_project_limit(2)
    state = _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=5, project_limit=4)
    assert state.is_completed(), state.message
    runs = _v2_runs(emu)
    assert len(runs) == 6
    assert _most_active_at_once(runs) <= 2


def test_max_concurrency_bounds_active_runs(emu: Emulator) -> None:
    state = _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=2, project_limit=0)
    assert state.is_completed(), state.message
    runs = _v2_runs(emu)
    assert len(runs) == 6
    assert _most_active_at_once(runs) <= 2


def test_polls_are_shared_between_windows(emu: Emulator) -> None:
    windows = 6
    state = _backfill(
        emu, "2017-01-01", "2017-06-30", max_concurrency=windows, project_limit=0, poll_interval=0.1
    )
    assert state.is_completed(), state.message
    runs = _v2_runs(emu)
    polls = [r for r in emu.requests() if r["endpoint"] in ("v2.list_runs", "v2.get_run")]
    # Not polls: CML's answer for windows without a record (one listing, before any start),
    # and the listing `_v2_runs` just made.
    polls = polls[1 : len(polls) - 1]
    # Each round asks once for every followed run of the job (one listing, or one GET when a
    # single run is followed), and rounds are at least `poll_interval` apart: never two
    # requests in one tick. (A window whose record write was slow joins late and is polled
    # alone after the others ended: still one request per tick.)
    # Arrival times carry each request's own delay on a loaded machine: a late one may land
    # closer to the next; polling per window would put most requests in the same tick.
    arrivals = sorted(datetime.fromisoformat(r["timestamp"]) for r in polls)
    gaps = [(b - a).total_seconds() for a, b in pairwise(arrivals)]
    assert len([gap for gap in gaps if gap < 0.09]) <= max(1, len(gaps) // 10), gaps
    per_run_polling = sum(
        (r.finished_at - r.created_at).total_seconds() / 0.1
        for r in runs
        if r.finished_at and r.created_at
    )
    assert len(polls) < per_run_polling / 2, (len(polls), per_run_polling)


def test_follow_needs_the_v2_key(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CML_API_V2_KEY")
    state = _backfill(emu, "2017-01-01", "2017-01-31")
    assert state.is_failed()
    assert "CML_API_V2_KEY" in str(state.message)
    assert emu.requests() == []


def test_cli_follow(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "209")
    args = ["backfill", url, "--from", "2017-01-01", "--to", "2017-02-28", "--follow"]
    result = CliRunner().invoke(app, [*args, "--poll", "1s", "--json"])
    assert result.exit_code == ExitCode.FAILURE, result.output
    report = json.loads(result.stdout)
    assert [o["result"] for o in report["outcomes"]] == ["run_failed", "run_failed"]
    assert [o["run_status"] for o in report["outcomes"]] == ["failed", "failed"]


def test_a_followed_run_whose_records_cannot_be_written_keeps_its_outcome(emu: Emulator) -> None:
    """The Prefect API refuses every write of the window's record (as a busy SQLite server
    can, past the client's retries; respx, since a real server cannot fail one route on
    demand): the start's and the end's writes both fail, yet the window ends `succeeded`
    with its run - not `start failed`, which would invite a second start."""
    with record_writes_refused():
        state = _backfill(emu, "2017-01-01", "2017-01-31")
    assert state.is_completed(), state.message
    (outcome,) = state.result().outcomes
    assert outcome.result == "succeeded"
    assert outcome.engine_id == emu.runs()[0]["id"]
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 1), 1))
