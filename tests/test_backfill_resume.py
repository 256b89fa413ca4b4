"""Resume after lost answers: a start created in CML whose answer never came back, and one
that failed before creating anything, then the same backfill again.

Counted from the emulator's record: every window started exactly once, none twice. Without an
API v2 key such windows are reported; with one, the backfill asks CML and adopts their runs
(or starts them when CML has none). A backfill SIGKILLed mid-start and resumed by another
process: `tests/test_many_machines.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    with Emulator() as cml:
        yield cml


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
