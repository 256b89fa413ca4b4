"""Backfills against the emulator over real sockets, on a real Prefect API.

Starts are counted from the emulator's own record (`emu.runs()`), never from our logs.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import pytest
from conftest import record_writes_refused

from cml_tasks._stretch import Stretch
from cml_tasks.backfill import (
    Action,
    Reprocess,
    WindowRecord,
    WindowStatus,
    decide_record,
    plan_backfill,
    window_key,
)
from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault
from cml_tasks.errors import CMLInputError
from cml_tasks.job import JobRef
from cml_tasks.settings import CMLSettings
from cml_tasks.window_options import WindowOptions
from cml_tasks.windows import Window

JAN = date(2017, 1, 1)


# --- planning (pure) ---------------------------------------------------------------------------


def test_plan_windows_keys_and_order() -> None:
    job = JobRef.parse("https://cml.example.com/alice/risk-analysis/jobs/208")
    plan = plan_backfill(job, date(2017, 1, 15), date(2017, 3, 2), order="newest")
    assert [p.label for p in plan.windows] == ["2017-03", "2017-02", "2017-01"]
    assert plan.windows[2].environment == {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}
    assert len({p.key for p in plan.windows}) == 3
    # The key is "this job, this window": rendering does not change it, the job and dates do.
    other = plan_backfill(
        job, JAN, JAN, WindowOptions(date_format="%Y%m%d", start_var="FROM", end_var="TO")
    )
    assert other.windows[0].key == plan.windows[2].key
    moved = JobRef.parse("https://other.example.com/alice/risk-analysis/jobs/208")
    assert window_key(moved, plan.windows[2].window) != plan.windows[2].key
    week = Window(start=date(2017, 1, 2), end=date(2017, 1, 9))
    assert window_key(job, week) != plan.windows[2].key


def test_plan_rejects_bad_input() -> None:
    job = JobRef.parse("https://cml.example.com/alice/risk-analysis/jobs/208")
    with pytest.raises(CMLInputError, match="order"):
        plan_backfill(job, JAN, JAN, order="sideways")
    with pytest.raises(CMLInputError, match="before start"):
        plan_backfill(job, date(2017, 2, 1), JAN)
    with pytest.raises(CMLInputError, match="host"):
        plan_backfill(JobRef.parse("alice/risk-analysis/208"), JAN, JAN)


def _record(status: WindowStatus) -> WindowRecord:
    return WindowRecord(
        key="k",
        job_url="https://h/alice/p/jobs/1",
        window_start=JAN,
        window_end=date(2017, 1, 31),
        environment={},
        status=status,
        error="boom",
    )


@pytest.mark.parametrize(
    ("status", "missing", "failed", "all_"),
    [
        (None, Action.START, Action.SKIP, Action.START),
        (WindowStatus.STARTED, Action.SKIP, Action.SKIP, Action.START),
        (WindowStatus.SUCCEEDED, Action.SKIP, Action.SKIP, Action.START),
        (WindowStatus.START_FAILED, Action.START, Action.START, Action.START),
        (WindowStatus.RUN_FAILED, Action.SKIP, Action.START, Action.START),
        (WindowStatus.STARTING, Action.UNKNOWN, Action.UNKNOWN, Action.START),
        (WindowStatus.OUTCOME_UNKNOWN, Action.UNKNOWN, Action.UNKNOWN, Action.START),
    ],
)
def test_decide(status: WindowStatus | None, missing: Action, failed: Action, all_: Action) -> None:
    record = None if status is None else _record(status)
    assert decide_record(record, Reprocess.MISSING)[0] is missing
    assert decide_record(record, Reprocess.FAILED)[0] is failed
    assert decide_record(record, Reprocess.ALL)[0] is all_


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (None, Action.START),
        (WindowStatus.SUCCEEDED, Action.SKIP),
        (WindowStatus.STARTED, Action.SKIP),  # followed again, not started
        (WindowStatus.RUN_FAILED, Action.START),
        (WindowStatus.START_FAILED, Action.START),
        (WindowStatus.OUTCOME_UNKNOWN, Action.UNKNOWN),
    ],
)
def test_a_pipeline_step_starts_whatever_has_not_succeeded(
    status: WindowStatus | None, action: Action
) -> None:
    record = None if status is None else _record(status)
    assert decide_record(record, Reprocess.MISSING, retry_failed=True)[0] is action


# --- the flow on the emulator ------------------------------------------------------------------


@pytest.fixture
def emu(
    monkeypatch: pytest.MonkeyPatch, no_retry_waits: None, prefect_api: None
) -> Iterator[Emulator]:
    """A fresh emulator (new port, so new record keys), the v1 key in the environment, no
    waits between client retries (exhausting them takes milliseconds), and the project's
    limit out of the way unless a test narrows it."""
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    _set_project_limit(50)
    with Emulator() as cml:
        yield cml


def _set_project_limit(size: int) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("cml-project:alice:risk-analysis", size)


def _backfill(emu: Emulator, start: str, end: str, **options: Any) -> Any:
    """The flow on the emulator; without the project limit unless a test asks for it.

    Each slot of a Prefect global concurrency limit costs write transactions on the test
    server's SQLite database, where they contend with task-run records ("database is
    locked", answered 503, which Prefect's client retries after ~2 s while its per-limit
    acquisition queue waits): tests of anything else pass `project_limit=0`.
    """
    from cml_tasks.prefect.backfill import cml_backfill

    options.setdefault("project_limit", 0)
    return cml_backfill(
        job=emu.job_url("alice", "risk-analysis", "208"),
        start=date.fromisoformat(start),
        end=date.fromisoformat(end),
        return_state=True,
        **options,
    )


def _starts(emu: Emulator) -> Counter[str]:
    """How many runs the emulator started per START_DATE."""
    return Counter(run["environment"]["START_DATE"] for run in emu.runs())


def _months(first: int, last: int) -> set[str]:
    return {f"2017-{m:02d}-01" for m in range(first, last + 1)}


def test_dry_run_lists_windows_and_starts_nothing(emu: Emulator) -> None:
    state = _backfill(emu, "2017-01-01", "2017-12-31", dry_run=True)
    report = state.result()
    assert [o.result for o in report.outcomes] == ["planned"] * 12
    assert report.outcomes[1].environment == {
        "START_DATE": "2017-02-01",
        "END_DATE": "2017-02-28",
    }
    assert emu.runs() == []


def test_every_window_once_and_overlap_starts_only_new_ones(emu: Emulator) -> None:
    first = _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=3)
    assert first.is_completed()
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 6), 1))
    second = _backfill(emu, "2017-04-01", "2017-09-30", order="newest")
    report = second.result()
    assert [o.window for o in report.outcomes][:2] == ["2017-09", "2017-08"]
    assert report.count("skipped") == 3
    assert report.count("started") == 3
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 9), 1))
    engine_ids = {o.engine_id for o in report.outcomes if o.engine_id}
    assert engine_ids <= {run["id"] for run in emu.runs()}


def _arrivals(emu: Emulator) -> list[float]:
    return sorted(
        datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
        for r in emu.requests()
        if r["endpoint"] == "v1.start"
    )


def _assert_at_most_in_flight(arrivals: list[float], bound: int, latency: float) -> None:
    """Each start takes >= `latency` on the server, so `bound + 1` starts in flight together
    would show as `bound + 1` arrivals within less than `latency`."""
    spans = [b - a for a, b in zip(arrivals, arrivals[bound:], strict=False)]
    assert min(spans) >= latency - 0.02, spans


def test_concurrency_is_bounded_by_max_concurrency(emu: Emulator) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=0.3))
    state = _backfill(emu, "2017-01-01", "2017-08-31", max_concurrency=3)
    assert state.is_completed()
    arrivals = _arrivals(emu)
    assert len(arrivals) == 8
    _assert_at_most_in_flight(arrivals, 3, 0.3)
    assert arrivals[2] - arrivals[0] < 0.3  # and the bound was used: 3 went out together


def test_project_limit_bounds_across_backfills(emu: Emulator) -> None:
    _set_project_limit(2)
    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=0.3))
    state = _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=5, project_limit=4)
    assert state.is_completed()
    _assert_at_most_in_flight(_arrivals(emu), 2, 0.3)


def test_a_backfill_keeps_its_slots_between_windows_and_gives_them_all_back(
    emu: Emulator,
) -> None:
    """Inside `keeping_slots` a window's slot is kept for the next window (one take per lane,
    not per window) and every kept slot goes back when the scope ends."""
    from prefect.client.orchestration import get_client

    from cml_tasks.prefect.project_limit import keeping_slots, project_slot

    name = "cml-project:alice:risk-analysis"
    _set_project_limit(3)

    def in_use() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots

    log = logging.getLogger("test")
    with keeping_slots(name):
        with project_slot(name, log, "first"):
            assert in_use() == 1
        assert in_use() == 1  # kept for the next window
        with project_slot(name, log, "second"), project_slot(name, log, "third"):
            assert in_use() == 2  # the kept one, and one more
        assert in_use() == 2
    assert in_use() == 0
    with project_slot(name, log, "alone"):  # outside a scope: given back at once
        assert in_use() == 1
    assert in_use() == 0

    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=0.1))
    assert _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=2, project_limit=4)
    assert in_use() == 0


def test_a_kept_slot_whose_lease_ran_out_is_not_lent_again(
    monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    """A kept slot that the server no longer has (its lease ran out while the process was
    paused, say) is dropped at its next renewal: the next window takes a real one."""
    from prefect.client.orchestration import get_client

    from cml_tasks.prefect import project_limit
    from cml_tasks.prefect.project_limit import keeping_slots, project_slot

    name = "cml-project:alice:risk-analysis"
    _set_project_limit(3)
    monkeypatch.setattr(project_limit, "RENEW_SECONDS", 0.2)
    log = logging.getLogger("test")

    def in_use() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots

    with keeping_slots(name):
        with project_slot(name, log, "first"):
            pass
        kept = project_limit._keeping.get()
        assert kept is not None
        (lease,) = kept._idle
        with get_client(sync_client=True) as client:  # the server forgets it
            client.release_concurrency_slots_with_lease(lease.id)
        assert in_use() == 0
        deadline = time.monotonic() + 10
        while not lease.gone:
            assert time.monotonic() < deadline, "the renewer never noticed"
            time.sleep(0.05)
        with project_slot(name, log, "second"):
            assert in_use() == 1  # a real slot, not the lost lease
    assert in_use() == 0


def test_a_busy_server_is_asked_for_a_slot_again_without_failing_the_window(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite answers a slot request 503 ("database is locked") while other writes commit.
    Prefect's client resends it after 2, 4, 8... s and fails the window after 6 answers;
    nothing has started yet, so each window asks again itself, sooner, and starts; the flow
    run's log says why they waited, once for the stretch (not once per window or answer).
    respx: a real server cannot be made busy on demand."""
    import httpx
    import respx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from cml_tasks.prefect import project_limit

    # A stretch of busy answers another test of this process met is not this test's.
    monkeypatch.setattr(project_limit, "_busy_stretch", Stretch(project_limit.BUSY_STRETCH_SECONDS))
    _set_project_limit(3)
    answers = iter([httpx.Response(503, json={"exception_message": "Service Unavailable"})] * 15)

    def answer(request: httpx.Request) -> httpx.Response | httpx.Request:
        if b"tag:" in request.content:
            return request  # Prefect's own tag check passes through
        return next(answers, request)

    with respx.mock(assert_all_called=True) as api:
        api.post(url__regex=r".*/api/v2/concurrency_limits/increment-with-lease$").mock(
            side_effect=answer
        )
        api.route().pass_through()
        state = _backfill(emu, "2017-01-01", "2017-03-31", project_limit=4, max_concurrency=3)
    assert state.is_completed(), state.message
    assert _starts(emu) == Counter({f"2017-{m:02d}-01": 1 for m in (1, 2, 3)})
    assert next(answers, None) is None  # all the busy answers were given
    told = "waits for a slot of cml-project:alice:risk-analysis: the Prefect server is busy"
    logs: list[str] = []
    deadline = time.monotonic() + 15  # logs reach the API through a background worker
    while not any(told in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.2)
        with get_client(sync_client=True) as client:
            flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=flow_run))]
    waits = [line for line in logs if told in line]
    assert len(waits) == 1 and waits[0].endswith(
        f"{told} (HTTP 503); asking again for up to 300 s"
    ), logs


def test_a_window_whose_task_engine_fails_is_one_error_not_the_backfills(emu: Emulator) -> None:
    """Prefect's task engine asks the server for tag concurrency slots before a window's
    task runs; when that fails (a busy SQLite server's 503 past the client's retries; here a
    500, which the client does not resend), the engine fails the task before it has a result.
    Only that window is an error; the others start and a rerun starts it. respx: one failed
    answer on demand."""
    import httpx
    import respx

    busy = [httpx.Response(500, json={"exception_message": "Internal Server Error"})]

    def answer(request: httpx.Request) -> httpx.Response | httpx.Request:
        return busy.pop() if busy and b"tag:" in request.content else request

    with respx.mock() as api:
        api.post(url__regex=r".*/api/v2/concurrency_limits/increment-with-lease$").mock(
            side_effect=answer
        )
        api.route().pass_through()
        state = _backfill(emu, "2017-01-01", "2017-03-31", max_concurrency=1)
    assert not busy
    assert state.is_failed()
    assert state.message.startswith("1 of 3 windows failed:"), state.message
    # whichever window's engine asked first (their task runs start at once, then queue)
    failed = re.search(r"\n(2017-0[123]): error: .*500", state.message)
    assert failed is not None, state.message
    months = {"2017-01-01", "2017-02-01", "2017-03-01"}
    assert _starts(emu) == Counter(months - {f"{failed.group(1)}-01"})
    rerun = _backfill(emu, "2017-01-01", "2017-03-31")
    assert rerun.is_completed()
    assert _starts(emu) == Counter({"2017-01-01": 1, "2017-02-01": 1, "2017-03-01": 1})


def test_scheduled_runs_and_a_backfill_share_the_project_limit(emu: Emulator) -> None:
    """Scheduled window runs take the same project slot as a backfill's windows: running at
    the same time, together they never have more starts in flight than the limit."""
    from cml_tasks.prefect.window_run import cml_window_run

    _set_project_limit(1)
    emu.inject(Fault(endpoint="v1.start", kind="latency", seconds=0.3))
    url = emu.job_url("alice", "risk-analysis", "208")
    with ThreadPoolExecutor(max_workers=3) as pool:
        backfill = pool.submit(
            _backfill, emu, "2017-01-01", "2017-03-31", max_concurrency=3, project_limit=4
        )
        scheduled = [
            pool.submit(cml_window_run, job=url, window_start=date(2017, month, 1))
            for month in (4, 5)
        ]
        assert backfill.result().is_completed()
        assert sorted(run.environment["START_DATE"] for run in (s.result() for s in scheduled)) == [
            "2017-04-01",
            "2017-05-01",
        ]
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 5), 1))
    _assert_at_most_in_flight(_arrivals(emu), 1, 0.3)


def test_a_started_window_whose_record_cannot_be_written_is_reported_started(
    emu: Emulator,
) -> None:
    """After the CML start, the Prefect API refuses every write of the window's record (as a
    busy SQLite server can, past the client's retries; respx: a real server cannot be made to
    fail one route on demand). The run exists, so the window is reported started with its
    run, saying its record was not updated - not as an error that invites a second start."""
    with record_writes_refused():
        state = _backfill(emu, "2017-01-01", "2017-02-28")
    assert state.is_completed(), state.message
    outcomes = state.result().outcomes
    assert [o.result for o in outcomes] == ["started", "started"]
    assert all("its record was not updated" in (o.reason or "") for o in outcomes)
    assert {o.engine_id for o in outcomes} == {run["id"] for run in emu.runs()}
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 2), 1))


def test_failed_window_does_not_stop_the_others_and_missing_retries_it(emu: Emulator) -> None:
    # The 3rd start answers 503 to every retry: surely not started.
    emu.inject(Fault(endpoint="v1.start", kind="503", calls=tuple(range(3, 9))))
    state = _backfill(emu, "2017-01-01", "2017-05-31", max_concurrency=1)
    assert state.is_failed()
    assert "1 of 5 windows failed" in state.message
    assert "2017-03: start failed" in state.message
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 5) - {"2017-03-01"}, 1))

    emu.clear_faults()
    rerun = _backfill(emu, "2017-01-01", "2017-05-31")
    report = rerun.result()
    assert report.count("started") == 1
    assert report.count("skipped") == 4
    assert _starts(emu) == Counter(dict.fromkeys(_months(1, 5), 1))


def test_reprocess_failed_and_all(emu: Emulator) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="503", calls=tuple(range(2, 8))))
    assert _backfill(emu, "2017-01-01", "2017-03-31", max_concurrency=1).is_failed()
    emu.clear_faults()
    failed_only = _backfill(emu, "2017-01-01", "2017-04-30", reprocess="failed").result()
    # April was never attempted: `failed` leaves it alone.
    assert [o.result for o in failed_only.outcomes] == ["skipped", "started", "skipped", "skipped"]
    everything = _backfill(emu, "2017-01-01", "2017-02-28", reprocess="all").result()
    assert everything.count("started") == 2
    assert _starts(emu) == Counter({"2017-01-01": 2, "2017-02-01": 2, "2017-03-01": 1})


def test_outcome_unknown_is_reported_and_never_retried(emu: Emulator) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from cml_tasks.prefect.records import window_records

    # The 2nd start is created but its answer is lost; the 3rd gets a 502 (may have started).
    emu.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=(2,)))
    emu.inject(Fault(endpoint="v1.start", kind="502", calls=(3,)))
    printed: list[str] = []  # the task runs' log lines, formatted as a console shows them
    shown = logging.Handler()
    shown.emit = lambda record: printed.append(logging.Formatter().format(record))  # type: ignore[method-assign]
    task_runs = logging.getLogger("prefect.task_runs")
    task_runs.addHandler(shown)
    try:
        state = _backfill(emu, "2017-01-01", "2017-04-30", max_concurrency=1)
    finally:
        task_runs.removeHandler(shown)
    assert state.is_failed()
    assert "2017-02: outcome unknown" in state.message
    assert "2017-03: outcome unknown" in state.message
    # Their task runs say so in the UI's lists and filters; no stray empty traceback.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = sorted(run.state.name for run in task_runs if run.state is not None)
    assert names == ["Completed", "Completed", "Outcome unknown", "Outcome unknown"]
    assert any("Task run failed with state: Outcome unknown" in line for line in printed)
    assert not any("NoneType: None" in line for line in printed), printed
    plan = plan_backfill(
        JobRef.parse(emu.job_url("alice", "risk-analysis", "208")), JAN, date(2017, 4, 30)
    )
    record = window_records().read(plan.windows[1].key)
    assert record is not None and record.status is WindowStatus.OUTCOME_UNKNOWN

    emu.clear_faults()
    rerun = _backfill(emu, "2017-01-01", "2017-04-30")
    assert rerun.is_failed()
    assert "2017-02: outcome unknown" in rerun.message
    # February's run exists (answer lost), March's not: neither is started blindly.
    assert _starts(emu) == Counter({"2017-01-01": 1, "2017-02-01": 1, "2017-04-01": 1})


def test_a_window_held_by_a_dead_process_is_unknown_and_resolved_through_v2(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that died holding a window (record `starting`, lease run out) may have
    started its run: never started blindly, resolved by asking CML."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    from cml_tasks.window_start import WindowStart

    _backfill(emu, "2017-01-01", "2017-02-28")
    plan = plan_backfill(
        JobRef.parse(emu.job_url("alice", "risk-analysis", "208")), JAN, date(2017, 3, 31)
    )
    # January was left `starting` after its run started; March before any run.
    dead = {"holder": "gone:1:x", "lease_until": datetime(2017, 1, 1, tzinfo=UTC)}
    with get_client(sync_client=True) as client:
        for planned, create in ((plan.windows[0], False), (plan.windows[2], True)):
            window = WindowStart(job=plan.job, planned=planned, records=None, log=None)  # type: ignore[arg-type]
            record = window.record(
                WindowStatus.STARTING, attempted_at=datetime(2017, 1, 1, tzinfo=UTC), **dead
            ).model_dump(mode="json")
            if create:
                client.create_variable(VariableCreate(name=planned.key, value=record))
            else:  # the record says starting: its outcome was never written
                client.update_variable(VariableUpdate(name=planned.key, value=record))

    blind = _backfill(emu, "2017-01-01", "2017-03-31")
    assert blind.is_failed()
    assert "2017-01: outcome unknown" in blind.message
    assert "2017-03: outcome unknown" in blind.message
    assert _starts(emu) == Counter({"2017-01-01": 1, "2017-02-01": 1})

    monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    report = _backfill(emu, "2017-01-01", "2017-03-31").result()
    assert [o.result for o in report.outcomes] == ["started", "skipped", "started"]
    assert "adopted run" in (report.outcomes[0].reason or "")
    assert _starts(emu) == Counter({"2017-01-01": 1, "2017-02-01": 1, "2017-03-01": 1})


def test_records_hold_no_secret(emu: Emulator) -> None:
    from cml_tasks.prefect.records import window_records

    _backfill(emu, "2017-01-01", "2017-02-28")
    job = JobRef.parse(emu.job_url("alice", "risk-analysis", "208"))
    records = window_records().records(job)
    assert len(records) == 2
    assert all(DEFAULT_V1_KEY not in record.model_dump_json() for record in records.values())


def test_bad_parameters_fail_before_any_request(emu: Emulator) -> None:
    for options in (
        {"reprocess": "some"},
        {"max_concurrency": 0},
        {"options": {"every": "fortnight"}},
    ):
        state = _backfill(emu, "2017-01-01", "2017-02-28", **options)
        assert state.is_failed()
    assert emu.requests() == []


def test_settings_used_for_a_job_without_host(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CML_HOST", emu.url)
    from cml_tasks.prefect.backfill import cml_backfill

    state = cml_backfill(job="alice/risk-analysis/208", start=JAN, end=JAN, return_state=True)
    assert state.is_completed()
    assert _starts(emu) == Counter({"2017-01-01": 1})
    assert CMLSettings.load().host == emu.url


def test_windows_do_not_feed_each_other_in_the_task_graph(emu: Emulator) -> None:
    """A window's end date is the next window's start date (one object): unquoted, Prefect
    linked window N-1's result to window N's input and drew a false arrow between them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = _backfill(emu, "2017-01-01", "2017-06-30", max_concurrency=1)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        flow_run_id = client.read_flow_run(state.state_details.flow_run_id).id
        deadline = time.monotonic() + 15
        while True:  # task runs reach the API through the events worker
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if len(runs) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(runs) == 6
    assert all(not inputs for run in runs for inputs in run.task_inputs.values())


def test_progress_tells_each_result_apart_with_rate_and_time_left() -> None:
    from collections import Counter

    from cml_tasks.prefect.backfill import progress_text

    counts = Counter({"started": 5, "start failed": 1, "outcome unknown": 1})
    assert progress_text(7, 12, counts, 120.0) == (
        "7 of 12 windows: 5 started, 1 start failed, 1 outcome unknown; "
        "3.5 windows/min, about 86 s left"
    )
    assert progress_text(12, 12, Counter({"started": 12}), 60.0) == (
        "12 of 12 windows: 12 started; 12.0 windows/min"
    )
    assert progress_text(1, 5000, Counter({"started": 1}), 6.0).endswith("about 8.3 h left")
    assert progress_text(0, 3, Counter(), 0.0) == "0 of 3 windows"
