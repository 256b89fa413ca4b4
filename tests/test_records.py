"""Window records on a real Prefect API: how a claim, its outcome, a take-over and a forget
are stored as Prefect Variables (`ServerRecords`): one readable variable per settled window,
records from before still read and moved."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from cml_tasks.backfill import (
    WindowRecord,
    WindowStatus,
    legacy_job_tag,
    legacy_window_key,
    window_key,
)
from cml_tasks.errors import CMLRecordError
from cml_tasks.job import JobRef
from cml_tasks.windows import Window

JOB = JobRef.parse("https://ml.example.com/alice/risk-analysis/jobs/777")
JANUARY = Window(start=date(2017, 1, 1), end=date(2017, 2, 1))
KEY = window_key(JOB, JANUARY)
LEGACY_KEY = legacy_window_key(JOB, JANUARY)


@pytest.fixture
def records(prefect_api: None) -> Iterator[Any]:
    from cml_tasks.prefect.records import window_records

    yield window_records()


def _record(status: WindowStatus, **fields: Any) -> WindowRecord:
    return WindowRecord(
        key=KEY,
        job_url=JOB.page_url,
        window_start=JANUARY.start,
        window_end=JANUARY.last_day,
        environment={"START_DATE": "2017-01-01"},
        status=status,
        **fields,
    )


def _variables() -> dict[str, dict[str, Any]]:
    """Every variable tagged `cml` on the server, by name: value and tags."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.request(
            "POST", "/variables/filter", json={"variables": {"tags": {"all_": ["cml"]}}}
        ).json()
    return {v["name"]: {"value": v["value"], "tags": v["tags"]} for v in found}


def test_the_key_names_the_job_and_the_window_s_first_and_last_day() -> None:
    assert KEY.startswith("cml-risk-analysis-777-2017-01-01-2017-01-31-")
    assert KEY[-12:] == LEGACY_KEY.removeprefix("cml-backfill-")[:12]
    other_user = JobRef.parse("https://ml.example.com/bob/risk-analysis/jobs/777")
    assert window_key(other_user, JANUARY) != KEY
    assert window_key(JOB, JANUARY, {"REGION": "eu"}) != KEY


def test_a_record_from_before_is_told_from_a_project_named_backfill() -> None:
    from cml_tasks.record_layout import is_legacy

    assert is_legacy(LEGACY_KEY) and is_legacy(f"{LEGACY_KEY}-outcome-a2")
    project = JobRef.parse("https://ml.example.com/alice/backfill/jobs/208")
    assert window_key(project, JANUARY).startswith("cml-backfill-208-2017-01-01-")
    assert not is_legacy(window_key(project, JANUARY))
    assert not is_legacy(KEY)


def test_a_settled_window_is_one_readable_variable(records: Any) -> None:
    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    assert claim is not None
    with claim as held:
        assert _variables()[KEY]["value"]["status"] == "starting"
        held.release(_record(WindowStatus.STARTED, engine_id="run1"))

    stored = _variables()
    assert list(stored) == [KEY]
    assert stored[KEY]["tags"] == ["cml", "cml-job:risk-analysis/777"]
    value = stored[KEY]["value"]
    assert (value["status"], value["engine_id"], value["holder"]) == ("started", "run1", None)
    assert value["window_end"] == "2017-01-31"  # inclusive, as everywhere else
    read = records.read(KEY)
    assert (read.status, read.engine_id, read.holder) == (WindowStatus.STARTED, "run1", None)
    assert records.records(JOB) == {KEY: read}


def test_a_take_over_claims_the_next_attempt_beside_the_record_until_it_ends(
    records: Any,
) -> None:
    from cml_tasks.record_layout import claim_name

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
        assert set(_variables()) == {KEY, claim_name(KEY, 1)}
        assert records.claim(KEY, failed, _record(WindowStatus.STARTING)) is None  # taken
        held.release(_record(WindowStatus.STARTED, engine_id="run2"))

    assert list(_variables()) == [KEY]
    listed = records.records(JOB)
    assert [(r.status, r.attempt, r.engine_id) for r in listed.values()] == [
        (WindowStatus.STARTED, 1, "run2")
    ]
    assert records.read(KEY) == listed[KEY]


def test_another_job_of_the_same_name_shares_the_tag_but_not_the_records(records: Any) -> None:
    other = JobRef.parse("https://other.example.com/alice/risk-analysis/jobs/777")
    theirs = _record(WindowStatus.STARTING).model_copy(
        update={"key": window_key(other, JANUARY), "job_url": other.page_url}
    )
    with records.claim(theirs.key, None, theirs) as held:
        held.release(theirs.model_copy(update={"status": WindowStatus.STARTED}))
    assert records.records(JOB) == {}
    assert list(records.records(other)) == [theirs.key]


def test_forget_deletes_the_record(records: Any) -> None:
    with records.claim(KEY, None, _record(WindowStatus.STARTING)) as held:
        held.release(_record(WindowStatus.START_FAILED, error="502"))
    assert records.forget(KEY)
    assert _variables() == {}
    assert records.records(JOB) == {}
    assert records.read(KEY) is None
    assert not records.forget(KEY)
    assert records.claim(KEY, None, _record(WindowStatus.STARTING)) is not None  # a new start


def _write_legacy(status: str, attempts: int = 1) -> None:
    """A window's variables as versions before the readable layout wrote them: the record
    (its first claim), the outcome of each attempt beside it, a hashed tag, and the window's
    end the day after."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    value = {
        "key": LEGACY_KEY,
        "job_url": JOB.page_url,
        "window_start": "2017-01-01",
        "window_end": "2017-02-01",
        "environment": {"START_DATE": "2017-01-01"},
        "status": "starting",
        "attempt": 0,
        "updated_at": "2017-02-01T00:00:00Z",
    }
    tags = ["cml", legacy_job_tag(JOB)]
    with get_client(sync_client=True) as client:
        client.create_variable(VariableCreate(name=LEGACY_KEY, value=value, tags=tags))
        for attempt in range(attempts):
            outcome = value | {"status": status, "attempt": attempt, "engine_id": f"old{attempt}"}
            client.create_variable(
                VariableCreate(name=f"{LEGACY_KEY}-outcome-a{attempt}", value=outcome, tags=tags)
            )


def test_a_record_from_before_is_read_as_the_same_window(records: Any) -> None:
    from cml_tasks.prefect.records import ServerRecords
    from cml_tasks.record_layout import find

    _write_legacy("started", attempts=2)
    fresh = ServerRecords(records.client, "reader", shared_api=True)  # asks for them anew
    read = fresh.read(KEY)
    assert (read.key, read.status, read.engine_id, read.attempt) == (
        LEGACY_KEY,
        WindowStatus.STARTED,
        "old1",
        1,
    )
    assert read.window_end == date(2017, 1, 31)
    assert find(fresh.records(JOB), KEY) == read


def test_a_record_from_before_is_replaced_when_its_window_is_next_written(
    records: Any,
) -> None:
    from cml_tasks.prefect.records import ServerRecords

    _write_legacy("start_failed")
    fresh = ServerRecords(records.client, "taker", shared_api=True)
    seen = fresh.read(KEY)
    with fresh.claim(KEY, seen, _record(WindowStatus.STARTING)) as held:
        held.release(_record(WindowStatus.STARTED, engine_id="new"))
    assert list(_variables()) == [KEY]
    now = fresh.read(KEY)
    assert (now.key, now.status, now.engine_id, now.attempt) == (
        KEY,
        WindowStatus.STARTED,
        "new",
        1,
    )


def test_forget_deletes_a_record_from_before_and_its_outcomes(records: Any) -> None:
    _write_legacy("started", attempts=2)
    assert records.forget(LEGACY_KEY)
    assert _variables() == {}


def _forwarded(request: urllib.request.Request) -> int:
    """Send the write to the real server; its own "locked" (503, a loaded SQLite server) is
    sent again, up to ten times: the scenario needs the write to land."""
    for _ in range(9):
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
        time.sleep(0.5)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def test_a_busy_or_lost_answer_to_a_record_write_is_sent_again(records: Any) -> None:
    """SQLite's "database is locked" (503) and an answer lost after the server wrote: the
    write is sent again at once (Prefect's client would wait 2, 4, 8 s)."""
    import respx

    sent: list[str] = []

    def busy_then_lost(request: httpx.Request) -> httpx.Response:
        """The first answer is "locked"; the second write reaches the server (urllib: respx
        leaves it alone) but its answer is lost; the third goes through."""
        sent.append(request.method)
        if len(sent) == 1:
            return httpx.Response(503, json={"detail": "database is locked"})
        forward = urllib.request.Request(
            str(request.url),
            data=request.content,
            headers={"Content-Type": "application/json"},
            method="PATCH",
        )
        status = _forwarded(forward)
        if len(sent) == 2:
            raise httpx.ReadError("connection reset before the answer", request=request)
        return httpx.Response(status)

    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    with respx.mock(assert_all_called=False) as api:
        api.patch(url__regex=rf".*/api/variables/name/{KEY}$").mock(side_effect=busy_then_lost)
        api.route().pass_through()
        with claim as held:
            held.release(_record(WindowStatus.STARTED, engine_id="run1"))
    assert len(sent) == 3
    assert records.read(KEY).engine_id == "run1"


def test_a_refused_record_write_is_a_record_error_and_leaves_no_claim(records: Any) -> None:
    from conftest import record_writes_refused

    with records.claim(KEY, None, _record(WindowStatus.STARTING)) as held:
        held.release(_record(WindowStatus.START_FAILED, error="502"))
    failed = records.read(KEY)
    with record_writes_refused(), pytest.raises(CMLRecordError, match="500"):
        records.claim(KEY, failed, _record(WindowStatus.STARTING))
    assert list(_variables()) == [KEY]
    assert records.read(KEY) == failed


def test_a_write_is_never_sent_once_the_claim_may_have_ended(
    records: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import respx

    from cml_tasks.prefect import records as module

    monkeypatch.setenv(module.LEASE_SETTING, "3")
    claim = records.claim(KEY, None, _record(WindowStatus.STARTING))
    with respx.mock(assert_all_called=False) as api:
        api.patch(url__regex=rf".*/api/variables/name/{KEY}$").mock(
            return_value=httpx.Response(503, json={"detail": "database is locked"})
        )
        api.route().pass_through()
        with claim as held, pytest.raises(CMLRecordError, match="before its claim's lease"):
            held.release(_record(WindowStatus.STARTED, engine_id="run1"))
        assert api.calls.call_count >= 1
    ended = records.read(KEY)
    assert ended.status is WindowStatus.STARTING
    assert ended.lease_until - timedelta(seconds=1) < ended.updated_at + timedelta(seconds=3)


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
