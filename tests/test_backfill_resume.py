"""Resume for real: a backfill process SIGKILLed halfway, then the same backfill again.

Counted from the emulator's record: every window started exactly once, none twice.
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

import pytest

from cml_tasks.backfill import WindowStatus, plan_backfill
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault
from cml_tasks.job import JobRef

ROOT = Path(__file__).resolve().parents[1]
LATENCY = 0.5


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    with Emulator() as cml:
        yield cml


def _backfill_process(url: str) -> subprocess.Popen[bytes]:
    from prefect.settings import PREFECT_API_URL

    script = (
        "import datetime as d\n"
        "from flows.backfill import cml_backfill\n"
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


@pytest.mark.usefixtures("prefect_api")
def test_killed_backfill_resumes_each_window_exactly_once(emu: Emulator) -> None:
    from cml_tasks.window_tasks import read_record, record_store
    from flows.backfill import cml_backfill

    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=LATENCY))
    process = _backfill_process(url)
    deadline = time.monotonic() + 60
    while len(emu.runs()) < 4:
        assert process.poll() is None, "the backfill ended before it could be killed"
        assert time.monotonic() < deadline, "the backfill never got going"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(LATENCY + 0.3)  # starts in flight at the kill still reach the server
    before = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert 4 <= sum(before.values()) < 12
    assert set(before.values()) == {1}

    emu.clear_faults()
    plan = plan_backfill(JobRef.parse(url), date(2017, 1, 1), date(2017, 12, 31))
    store = record_store()
    interrupted = {
        p.label
        for p in plan.windows
        if (r := read_record(store, p.key)) is not None and r.status is WindowStatus.STARTING
    }
    state = cml_backfill(job=url, start=date(2017, 1, 1), end=date(2017, 12, 31), return_state=True)

    starts = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert starts == Counter({f"2017-{m:02d}-01": 1 for m in range(1, 13)})
    # Windows whose start was in flight at the kill are reported, not started again.
    if interrupted:
        assert state.is_failed()
        for label in interrupted:
            assert f"{label}: outcome unknown" in str(state.message)
    else:
        assert state.is_completed()
