"""Outcome-unknown starts are reconciled through API v2: exactly one run per window."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cml_tasks import (
    AsyncCMLClient,
    CMLClient,
    CMLOutcomeUnknown,
    CMLProtocolError,
    CMLSettings,
    JobRef,
    JobRun,
    RetryPolicy,
)
from cml_tasks.emulator import DEFAULT_V2_KEY, Emulator, Fault, default_config
from cml_tasks.reconcile import async_start_run, is_ours, start_run

RETRY = RetryPolicy(attempts=3, timeout=2, wait_initial=0.01, wait_max=0.02)
SETTINGS = CMLSettings.load(host=None, api_v2_key=DEFAULT_V2_KEY)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(default_config(time_scale=0.05)) as emulator:
        yield emulator


def windows(n: int) -> list[dict[str, str]]:
    return [
        {"START_DATE": f"2017-{m:02d}-01", "END_DATE": f"2017-{m:02d}-28"} for m in range(1, n + 1)
    ]


def runs_per_window(emu: Emulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in emu.runs():
        counts[run["environment"]["START_DATE"]] = (
            counts.get(run["environment"]["START_DATE"], 0) + 1
        )
    return counts


@pytest.mark.parametrize("kind", ["lost_answer", "500", "504"])
def test_exactly_one_run_per_window(emu: Emulator, kind: str) -> None:
    """Every other start loses its answer (or fails before creating anything)."""
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v2.create_run", kind=kind, calls=(1, 3, 5, 7, 9, 11)))
    with CMLClient(SETTINGS, retry=RETRY) as cml:
        adopted = [start_run(cml, url, env, settle=0).environment for env in windows(6)]
    assert adopted == windows(6)
    assert runs_per_window(emu) == {w["START_DATE"]: 1 for w in windows(6)}


def test_gives_up_with_outcome_unknown_after_the_attempts(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v2.create_run", kind="502"))
    with CMLClient(SETTINGS, retry=RETRY) as cml, pytest.raises(CMLOutcomeUnknown):
        start_run(cml, url, windows(1)[0], attempts=2, settle=0)
    assert emu.runs() == []


def test_unknown_when_cml_cannot_be_asked_either(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v2.create_run", kind="lost_answer", times=1))
    emu.inject(Fault(endpoint="v2.list_runs", kind="503"))
    with CMLClient(SETTINGS, retry=RETRY) as cml, pytest.raises(CMLOutcomeUnknown):
        start_run(cml, url, windows(1)[0], settle=0)
    assert len(emu.runs()) == 1  # and it did not start another one blindly


def test_async_twin(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v2.create_run", kind="lost_answer", calls=(1, 2, 4)))

    async def scenario() -> list[str]:
        async with AsyncCMLClient(SETTINGS, retry=RETRY) as cml:
            return [(await async_start_run(cml, url, env, settle=0)).id for env in windows(3)]

    ids = asyncio.run(scenario())
    assert sorted(ids) == sorted(r["id"] for r in emu.runs())
    assert runs_per_window(emu) == {w["START_DATE"]: 1 for w in windows(3)}


def test_naive_created_at_is_never_adopted(emu: Emulator) -> None:
    """Issue item 9: a run listed with a `created_at` without a time zone made
    reconciliation raise `TypeError` (exit 1). It is protocol trouble now: the start stays
    an unknown outcome (caused by the `CMLProtocolError`), nothing is adopted on it and
    nothing is started again."""
    url = emu.job_url("alice", "risk-analysis", "208")
    window = windows(1)[0]
    naive = {
        "id": "abcdefgh12345678",
        "status": "ENGINE_RUNNING",
        "environment": json.dumps(window),  # the very environment of the attempt
        "created_at": datetime.now(UTC).replace(tzinfo=None).isoformat(),
    }
    emu.inject(Fault(endpoint="v2.create_run", kind="lost_answer", times=1))
    emu.inject(
        Fault(endpoint="v2.list_runs", kind="answer", body=json.dumps({"job_runs": [naive]}))
    )
    with CMLClient(SETTINGS, retry=RETRY) as cml, pytest.raises(CMLOutcomeUnknown) as caught:
        start_run(cml, url, window, settle=0)
    assert isinstance(caught.value.__cause__, CMLProtocolError)
    assert "created_at" in str(caught.value.__cause__)
    assert len(emu.runs()) == 1  # the lost start's run; none started again blindly


def test_a_naive_created_at_built_without_validation_is_never_ours() -> None:
    """Issue item 9, defence in depth: a `JobRun` made with `model_construct` skips the
    model's check; comparing its naive time raises `CMLProtocolError`, not `TypeError`."""
    job = JobRef.parse("https://cml.example.com/alice/risk-analysis/jobs/208")
    run = JobRun.model_construct(
        id="abcdefgh12345678", job=job, environment={}, created_at=datetime(2017, 1, 1)
    )
    with pytest.raises(CMLProtocolError, match="without a time zone"):
        is_ours(run, {}, datetime.now(UTC))
