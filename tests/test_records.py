"""Window records on a real Prefect API: how a claim, its outcome, a take-over and a forget
are stored as Prefect Variables (`ServerRecords`)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest

from cml_tasks.backfill import WindowRecord, WindowStatus, job_tag
from cml_tasks.errors import CMLRecordError
from cml_tasks.job import JobRef

JOB = JobRef.parse("https://ml.example.com/alice/risk-analysis/jobs/777")
KEY = "cml-backfill-" + "7" * 40


@pytest.fixture
def records(prefect_api: None) -> Iterator[Any]:
    from cml_tasks.prefect.records import window_records

    yield window_records()


def _record(status: WindowStatus, **fields: Any) -> WindowRecord:
    return WindowRecord(
        key=KEY,
        job_url=JOB.page_url,
        window_start=date(2017, 1, 1),
        window_end=date(2017, 2, 1),
        environment={"START_DATE": "2017-01-01"},
        status=status,
        **fields,
    )


def _stored(name: str) -> dict[str, Any] | None:
    """A variable's value as the server holds it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(name)
    return None if variable is None else dict(variable.value)  # type: ignore[arg-type]


def test_an_outcome_is_created_beside_the_record_never_written_over_it(records: Any) -> None:
    from cml_tasks.record_layout import outcome_name

    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    assert claim is not None
    with claim as held:
        held.release(_record(WindowStatus.STARTED, engine_id="run1"))

    assert (_stored(KEY) or {})["status"] == "starting"  # the claim, as it was created
    outcome = _stored(outcome_name(KEY, 0))
    assert outcome is not None and outcome["status"] == "started"
    read = records.read(KEY)
    assert (read.status, read.engine_id, read.holder) == (WindowStatus.STARTED, "run1", None)
    assert records.records(job_tag(JOB)) == [read]


def test_a_take_over_claims_the_next_attempt_and_its_outcome_wins(records: Any) -> None:
    first = records.claim(KEY, None, _record(WindowStatus.STARTING))
    with first as held:
        held.release(_record(WindowStatus.START_FAILED, error="502"))
    failed = records.read(KEY)
    assert failed.status is WindowStatus.START_FAILED

    again = records.claim(KEY, failed, _record(WindowStatus.STARTING))
    assert again is not None
    with again as held:
        during = records.read(KEY)
        assert (during.status, during.attempt) == (WindowStatus.STARTING, 1)
        assert records.claim(KEY, failed, _record(WindowStatus.STARTING)) is None  # taken
        held.release(_record(WindowStatus.STARTED, engine_id="run2"))

    listed = records.records(job_tag(JOB))
    assert [(r.status, r.attempt, r.engine_id) for r in listed] == [
        (WindowStatus.STARTED, 1, "run2")
    ]
    assert records.read(KEY) == listed[0]


def test_forget_deletes_the_record_and_every_outcome(records: Any) -> None:
    from cml_tasks.record_layout import outcome_name

    with records.claim(KEY, None, _record(WindowStatus.STARTING)) as held:
        held.release(_record(WindowStatus.START_FAILED, error="502"))
    with records.claim(KEY, records.read(KEY), _record(WindowStatus.STARTING)) as held:
        held.release(_record(WindowStatus.STARTED, engine_id="run2"))

    assert records.forget(KEY)
    assert [_stored(n) for n in (KEY, outcome_name(KEY, 0), outcome_name(KEY, 1))] == [None] * 3
    assert records.records(job_tag(JOB)) == []
    assert records.read(KEY) is None
    assert not records.forget(KEY)
    assert records.claim(KEY, None, _record(WindowStatus.STARTING)) is not None  # a new start


def test_an_outcome_written_by_another_process_is_a_record_error(records: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    from cml_tasks.record_layout import outcome_name

    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    other = _record(WindowStatus.STARTED, engine_id="theirs").model_dump(mode="json")
    with get_client(sync_client=True) as client:
        client.create_variable(VariableCreate(name=outcome_name(KEY, 0), value=other, tags=["cml"]))
    with claim as held, pytest.raises(CMLRecordError, match="exists already"):
        held.release(_record(WindowStatus.STARTED, engine_id="ours"))
    assert records.read(KEY).engine_id == "theirs"


def test_an_outcome_whose_answer_was_lost_is_written_once(records: Any) -> None:
    """The server creates the outcome but the answer never arrives: Prefect's client sends
    the creation again, which finds the outcome already there, and it is ours."""
    import respx

    from cml_tasks.record_layout import OUTCOME_INFIX

    sent: list[int] = []

    def lose_first_answer(request: httpx.Request) -> httpx.Response:
        """Each creation reaches the server through urllib (respx leaves it alone); the first
        one's connection then drops before its answer."""
        forward = urllib.request.Request(
            str(request.url),
            data=request.content,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(forward, timeout=30) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            status, body = refused.code, refused.read()
        sent.append(status)
        if len(sent) == 1:
            raise httpx.ReadError("connection reset before the answer", request=request)
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    with respx.mock(assert_all_called=True) as api:
        api.post(url__regex=r".*/api/variables/$", content__contains=OUTCOME_INFIX).mock(
            side_effect=lose_first_answer
        )
        api.route().pass_through()
        with claim as held:
            held.release(_record(WindowStatus.STARTED, engine_id="run1"))
    assert sent == [201, 409]  # created; sent again, found
    assert records.read(KEY).engine_id == "run1"


def test_the_claim_lease_is_45_s_unless_cml_claim_lease_seconds_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cml_tasks.errors import CMLConfigError
    from cml_tasks.prefect.records import LEASE_SETTING, lease_seconds

    monkeypatch.delenv(LEASE_SETTING, raising=False)
    assert lease_seconds() == 45.0
    monkeypatch.setenv(LEASE_SETTING, "15")
    assert lease_seconds() == 15.0
    for bad in ("0", "2", "nan", "inf", "1e9", "soon"):
        monkeypatch.setenv(LEASE_SETTING, bad)
        with pytest.raises(CMLConfigError, match=r"CML_CLAIM_LEASE_SECONDS .*from 3 to 3600"):
            lease_seconds()
