"""The Prefect task and credentials block, on a real (temporary) Prefect API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cml_tasks import CMLSettings, StartedRun
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator

pytestmark = pytest.mark.usefixtures("prefect_api")

JANUARY = {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def task_runs_and_logs(flow_run_id: Any) -> tuple[list[Any], str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async def read() -> tuple[list[Any], str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return runs, "\n".join(log.message for log in logs)

    # Task runs and logs reach the API through background workers: wait for them (bounded).
    deadline = time.monotonic() + 15
    while True:
        runs, logs = asyncio.run(read())
        if (runs and logs) or time.monotonic() > deadline:
            return runs, logs
        time.sleep(0.2)


def test_task_is_named_after_job_and_window_and_logs_the_run(cml: Emulator) -> None:
    from prefect import flow
    from prefect.logging.handlers import APILogHandler
    from prefect.runtime import flow_run

    from cml_tasks.prefect.tasks import start_cml_job

    url = cml.job_url("alice", "risk-analysis", "208")
    settings = CMLSettings.load(_env_file=None, api_key=DEFAULT_V1_KEY)

    @flow
    def monthly() -> tuple[str, StartedRun]:
        return flow_run.id, start_cml_job(url, JANUARY, credentials=settings)

    flow_run_id, run = monthly()
    APILogHandler().flush()
    assert run.engine_id == cml.runs()[0]["id"]
    assert cml.runs()[0]["environment"] == JANUARY
    task_runs, logs = task_runs_and_logs(flow_run_id)
    assert [t.name for t in task_runs] == ["start risk-analysis/208 2017-01-01..2017-01-31"]
    assert run.engine_id in logs and url in logs
    assert DEFAULT_V1_KEY not in logs
    assert DEFAULT_V1_KEY not in run.model_dump_json()


def test_task_defaults_to_settings_from_environment(
    cml: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    from cml_tasks.prefect.tasks import start_cml_job

    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    monkeypatch.setenv("CML_HOST", cml.url)

    @flow
    def by_parts() -> StartedRun:
        return start_cml_job("alice/risk-analysis/208", window="2017-01")

    assert by_parts().engine_id == cml.runs()[0]["id"]


def test_credentials_block_round_trip_hides_the_key(cml: Emulator) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from cml_tasks.prefect.blocks import CMLCredentials
    from cml_tasks.prefect.tasks import start_cml_job

    CMLCredentials(host=cml.url, api_key=DEFAULT_V1_KEY).save("emulator", overwrite=True)
    block = CMLCredentials.load("emulator")
    assert DEFAULT_V1_KEY not in repr(block)

    async def stored() -> str:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                "emulator", block_type_slug="cml-credentials", include_secrets=False
            )
        return str(document.data)

    assert DEFAULT_V1_KEY not in asyncio.run(stored())

    @flow
    def with_block() -> StartedRun:
        return start_cml_job("alice/risk-analysis/208", JANUARY, credentials=block)

    assert with_block().engine_id == cml.runs()[0]["id"]


def test_failed_start_fails_the_task_with_a_typed_error(cml: Emulator) -> None:
    from prefect import flow

    from cml_tasks import CMLNotFoundError
    from cml_tasks.prefect.tasks import start_cml_job

    settings = CMLSettings.load(_env_file=None, api_key=DEFAULT_V1_KEY)

    @flow
    def missing() -> StartedRun:
        return start_cml_job(cml.job_url("alice", "risk-analysis", "404"), credentials=settings)

    with pytest.raises(CMLNotFoundError):
        missing()
