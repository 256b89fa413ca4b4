"""The follow-to-completion tasks in real Prefect flows: CML outcomes as Prefect states."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect import flow

from cml_tasks import CMLSettings, StartedRun
from cml_tasks.emulator import (
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    Emulator,
    EmulatorConfig,
    Fault,
    default_config,
)
from cml_tasks.models import JobRun
from cml_tasks.prefect.tasks import arun_cml_job, follow_cml_run, run_cml_job, start_cml_job
from cml_tasks.run_errors import CMLRunFailed, CMLRunTimedOut, CMLWaitTimeout
from cml_tasks.run_status import RunStatus

pytestmark = pytest.mark.usefixtures("prefect_api")
SETTINGS = CMLSettings.load(host=None, api_key=DEFAULT_V1_KEY, api_v2_key=DEFAULT_V2_KEY)


@pytest.fixture(scope="module")
def cml() -> Iterator[Emulator]:
    data = default_config(time_scale=0.1).model_dump()
    skipped = {"id": "214", "name": "Skipped one", "outcome": "skipped"}
    data["projects"][0]["jobs"] = [*data["projects"][0]["jobs"], skipped]
    with Emulator(EmulatorConfig.model_validate(data)) as emu:
        yield emu


@pytest.mark.parametrize(
    ("job_id", "state_type", "state_name", "error"),
    [
        ("208", "COMPLETED", "Completed", None),
        ("214", "COMPLETED", "Skipped", None),
        ("209", "FAILED", "Failed", CMLRunFailed),
        ("210", "FAILED", "Failed", CMLRunTimedOut),
    ],
)
def test_outcome_maps_to_a_prefect_state(
    cml: Emulator, job_id: str, state_type: str, state_name: str, error: type[Exception] | None
) -> None:
    @flow
    def one() -> tuple[str, str | None, object]:
        state = run_cml_job(
            cml.job_url("alice", "risk-analysis", job_id),
            {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"},
            credentials=SETTINGS,
            poll_interval=0.05,
            return_state=True,
        )
        return state.type.value, state.name, state.result(raise_on_failure=False)

    kind, name, result = one()
    assert (kind, name) == (state_type, state_name)
    if error is not None:
        assert isinstance(result, error)
        assert result.run.page_url in str(result)
    else:
        assert isinstance(result, JobRun) and result.environment["START_DATE"] == "2017-01-01"


def test_stopped_run_is_cancelled(cml: Emulator) -> None:
    @flow
    def stopped() -> object:
        started = start_cml_job(cml.job_url("alice", "risk-analysis", "211"), credentials=SETTINGS)
        assert isinstance(started, StartedRun)
        from cml_tasks.prefect.tasks import shared_client

        shared_client(SETTINGS).stop_run(started.job, started.engine_id)
        state = follow_cml_run(started.job, started.engine_id, SETTINGS, 0.05, return_state=True)
        return state.type.value

    assert stopped() == "CANCELLED"


def test_max_wait_fails_the_task_and_stops_the_run(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "211")

    @flow
    def too_long() -> str:
        state = run_cml_job(
            url, credentials=SETTINGS, poll_interval=0.05, max_wait=0.3, return_state=True
        )
        return type(state.result(raise_on_failure=False)).__name__

    assert too_long() == CMLWaitTimeout.__name__
    assert cml.runs()[-1]["stop_requested"]


def test_async_task_with_lost_answer_and_flaky_polls(cml: Emulator) -> None:
    cml.inject(Fault(endpoint="v2.create_run", kind="lost_answer", times=1))
    cml.inject(Fault(endpoint="v2.get_run", kind="503", times=2))
    before = len(cml.runs())

    @flow
    async def async_one() -> JobRun:
        return await arun_cml_job(
            cml.job_url("alice", "risk-analysis", "208"),
            {"W": "1"},
            credentials=SETTINGS,
            poll_interval=0.05,
        )

    import asyncio

    run = asyncio.run(async_one())
    assert run.status is RunStatus.SUCCEEDED
    assert len(cml.runs()) == before + 1
    cml.clear_faults()
