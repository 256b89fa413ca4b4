"""Resume for real: a backfill process SIGKILLed halfway, then the same backfill again.

Counted from the emulator's record: every window started exactly once, none twice. Without an
API v2 key, windows in flight at the kill are reported; with one, the rerun asks CML and adopts
their runs (or starts them when CML has none).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cml_tasks.backfill import WindowStatus, plan_backfill
from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault
from cml_tasks.job import JobRef

ROOT = Path(__file__).resolve().parents[1]
LATENCY = 3.0  # the 5th and 6th starts dawdle this long: the kill lands while they are in flight


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    with Emulator() as cml:
        yield cml


@pytest.fixture(autouse=True)
def _roomy_project_limit(prefect_api: None) -> Iterator[None]:
    """Slots held by a killed backfill come back only when their lease expires (and only
    where the server runs its lease service): keep the shared project limit out of the way,
    and drop it afterwards so no later test inherits the dead process's slots."""
    from prefect.client.orchestration import get_client

    name = "cml-project:alice:risk-analysis"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 50)
    yield
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def _backfill_process(url: str) -> subprocess.Popen[bytes]:
    from prefect.settings import PREFECT_API_URL

    script = (
        "import datetime as d\n"
        "from cml_tasks.prefect.backfill import cml_backfill\n"
        f"cml_backfill(job={url!r}, start=d.date(2017, 1, 1), end=d.date(2017, 12, 31),"
        " max_concurrency=2)\n"
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _statuses(url: str) -> dict[str, WindowStatus | None]:
    """What each window's record says now (not waiting for a backfill holding its lock)."""
    from cml_tasks.prefect.records import window_records

    plan = plan_backfill(JobRef.parse(url), date(2017, 1, 1), date(2017, 12, 31))
    records = window_records()
    return {
        p.label: r.status if (r := records.read(p.key)) is not None else None for p in plan.windows
    }


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("v2_key", [False, True], ids=["v1-only", "with-v2-key"])
def test_killed_backfill_resumes_each_window_exactly_once(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, v2_key: bool
) -> None:
    from cml_tasks.prefect.backfill import cml_backfill

    url = emu.job_url("alice", "risk-analysis", "208")
    _statuses(url)  # resolve the record store now, not while the slow starts are in flight
    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=LATENCY, calls=[5, 6]))
    process = _backfill_process(url)
    deadline = time.monotonic() + 60
    # Kill while the two slow starts are in flight: their records say `starting`, their runs
    # land later.
    while len(emu.runs()) < 4 or list(_statuses(url).values()).count(WindowStatus.STARTING) < 2:
        assert process.poll() is None, "the backfill ended before it could be killed"
        assert time.monotonic() < deadline, "the backfill never got going"
        time.sleep(0.05)
    time.sleep(1.0)  # a claim writes `starting` just before its call goes out: let both go
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = {label for label, s in _statuses(url).items() if s is WindowStatus.STARTING}
    assert len(interrupted) == 2
    # The starts in flight at the kill were received whole: their runs still land.
    while not interrupted <= {run["environment"]["START_DATE"][:7] for run in emu.runs()}:
        assert time.monotonic() < deadline, "the interrupted starts never landed"
        time.sleep(0.05)
    before = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert sum(before.values()) == 6
    assert set(before.values()) == {1}

    emu.clear_faults()
    if v2_key:
        monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    state = cml_backfill(job=url, start=date(2017, 1, 1), end=date(2017, 12, 31), return_state=True)

    starts = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert starts == Counter({f"2017-{m:02d}-01": 1 for m in range(1, 13)})
    if v2_key:
        # In flight at the kill: CML has their runs, and the rerun adopted them.
        assert state.is_completed(), state.message
        report = state.result()
        adopted = {o.window for o in report.outcomes if "adopted run" in (o.reason or "")}
        assert adopted == interrupted
        assert set(_statuses(url).values()) == {WindowStatus.STARTED}
        by_window = {o.window: o.engine_id for o in report.outcomes}
        run_of = {r["environment"]["START_DATE"][:7]: r["id"] for r in emu.runs()}
        assert all(by_window[label] == run_of[label] for label in interrupted)
    else:
        # Without a v2 key they are reported, not started again.
        assert state.is_failed()
        for label in interrupted:
            assert f"{label}: outcome unknown" in str(state.message)
            assert "CML_API_V2_KEY" in str(state.message)


def _run_backfill(url: str, **options: object) -> Any:
    from cml_tasks.prefect.backfill import cml_backfill

    return cml_backfill(
        job=url,
        start=date(2017, 1, 1),
        end=date(2017, 4, 30),
        max_concurrency=1,
        project_limit=0,
        return_state=True,
        **options,
    )


@pytest.mark.usefixtures("prefect_api", "no_retry_waits")
def test_lost_answer_is_adopted_with_the_v2_key(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    url = emu.job_url("alice", "risk-analysis", "208")
    # The 2nd start is created but its answer lost; the 3rd fails with a 502 before creating
    # anything (so CML has no run of it: starting again is safe).
    emu.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=(2,)))
    emu.inject(Fault(endpoint="v1.start", kind="502", calls=(3,)))
    state = _run_backfill(url)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.count("started") == 4
    starts = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert starts == Counter({f"2017-{m:02d}-01": 1 for m in range(1, 5)})
    assert {o.engine_id for o in report.outcomes} == {r["id"] for r in emu.runs()}


@pytest.mark.usefixtures("prefect_api", "no_retry_waits")
def test_unknown_records_are_resolved_by_a_rerun_with_the_v2_key(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=(2,)))
    emu.inject(Fault(endpoint="v1.start", kind="502", calls=(3,)))
    first = _run_backfill(url)  # no v2 key: February and March are left "outcome unknown"
    assert first.is_failed()
    assert "2017-02: outcome unknown" in str(first.message)
    assert "2017-03: outcome unknown" in str(first.message)
    emu.clear_faults()

    monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    rerun = _run_backfill(url)
    assert rerun.is_completed(), rerun.message
    report = {o.window: o for o in rerun.result().outcomes}
    assert "adopted run" in str(report["2017-02"].reason)  # its answer was lost: it exists
    assert "CML has no run of it" in str(report["2017-03"].reason)  # the 502: started now
    starts = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert starts == Counter({f"2017-{m:02d}-01": 1 for m in range(1, 5)})
