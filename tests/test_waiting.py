"""Following runs to the end on the emulator: outcomes, timeouts, flaky polls, shared polls."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from cml_tasks import AsyncCMLClient, CMLClient, CMLSettings, RetryPolicy
from cml_tasks.emulator import DEFAULT_V2_KEY, Emulator, EmulatorConfig, Fault, default_config
from cml_tasks.errors import CMLWaitCancelled
from cml_tasks.models import JobRun
from cml_tasks.run_errors import (
    CMLRunFailed,
    CMLRunSkipped,
    CMLRunStopped,
    CMLRunTimedOut,
    CMLWaitTimeout,
)
from cml_tasks.run_status import RunStatus
from cml_tasks.waiting import RunPoller, async_wait_for_run, raise_for_status, wait_for_run

# Two tries only, so a fault that fires twice exhausts the client's retries: the waiter's
# own tolerance is what gets tested.
RETRY = RetryPolicy(attempts=2, timeout=2, wait_initial=0.01, wait_max=0.02)


def world() -> EmulatorConfig:
    """The default jobs, plus one whose runs are skipped."""
    data = default_config(time_scale=0.2).model_dump()
    skipped = {"id": "214", "name": "Skipped one", "outcome": "skipped"}
    data["projects"][0]["jobs"] = [*data["projects"][0]["jobs"], skipped]
    return EmulatorConfig.model_validate(data)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(world()) as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator) -> Iterator[Emulator]:
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
def client() -> Iterator[CMLClient]:
    settings = CMLSettings.load(host=None, api_v2_key=DEFAULT_V2_KEY)
    with CMLClient(settings, retry=RETRY) as cml:
        yield cml


def requests_to(emu: Emulator, endpoint: str, since: int = 0) -> list[str]:
    time.sleep(0.05)  # the log may trail an answer by a moment
    return [r["path"] for r in emu.requests()[since:] if r["endpoint"] == endpoint]


@pytest.mark.parametrize(
    ("job_id", "status", "error"),
    [
        ("208", RunStatus.SUCCEEDED, None),
        ("209", RunStatus.FAILED, CMLRunFailed),
        ("210", RunStatus.TIMEDOUT, CMLRunTimedOut),
        ("214", RunStatus.SKIPPED, CMLRunSkipped),
    ],
)
def test_each_outcome(
    emu: Emulator, client: CMLClient, job_id: str, status: RunStatus, error: type[Exception] | None
) -> None:
    changes: list[RunStatus] = []
    run = client.create_run(emu.job_url("alice", "risk-analysis", job_id))
    done = wait_for_run(
        client, run, poll_interval=0.05, on_change=lambda r: changes.append(r.status)
    )
    assert done.status is status
    assert changes[0] is RunStatus.SCHEDULING and changes[-1] is status
    assert all(a is not b for a, b in itertools.pairwise(changes))  # changes only
    if error is None:
        assert raise_for_status(done) is done
    else:
        with pytest.raises(error) as raised:
            raise_for_status(done)
        assert done.page_url in str(raised.value)


def test_stopped_elsewhere(emu: Emulator, client: CMLClient) -> None:
    url = emu.job_url("alice", "risk-analysis", "211")
    run = client.create_run(url)
    threading.Timer(0.2, client.stop_run, args=(url, run.id)).start()
    done = wait_for_run(client, run, poll_interval=0.05)
    assert done.status is RunStatus.STOPPED
    with pytest.raises(CMLRunStopped):
        raise_for_status(done)


@pytest.mark.parametrize("stop", [True, False])
def test_max_wait_raises_and_stops_by_default(emu: Emulator, client: CMLClient, stop: bool) -> None:
    run = client.create_run(emu.job_url("alice", "risk-analysis", "211"))  # runs 12 s
    with pytest.raises(CMLWaitTimeout) as raised:
        wait_for_run(client, run, poll_interval=0.05, max_wait=0.3, stop_on_timeout=stop)
    assert raised.value.stopped is stop
    assert bool(requests_to(emu, "v2.stop_run")) is stop or not stop
    record = next(r for r in emu.runs() if r["id"] == run.id)
    assert record["stop_requested"] is stop


@pytest.mark.parametrize("kind", ["500", "503", "drop", "429"])
def test_transient_poll_failures_never_fail_the_wait(
    emu: Emulator, client: CMLClient, kind: str
) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    run = client.create_run(url)
    starts = len(emu.runs())
    # Four failures in a row: more than the client's two tries, so whole polls fail.
    emu.inject(Fault(endpoint="v2.get_run", kind=kind, times=4, retry_after=0))
    done = wait_for_run(client, run, poll_interval=0.05)
    assert done.status is RunStatus.SUCCEEDED
    assert len(emu.runs()) == starts  # never started another


def test_cancel_stops_the_run(emu: Emulator, client: CMLClient) -> None:
    run = client.create_run(emu.job_url("alice", "risk-analysis", "211"))
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    with pytest.raises(CMLWaitCancelled):
        wait_for_run(client, run, poll_interval=10, should_cancel=cancelled.is_set)
    assert next(r for r in emu.runs() if r["id"] == run.id)["stop_requested"]


def test_polls_are_shared_across_many_runs(emu: Emulator, client: CMLClient) -> None:
    """100 runs of one job followed from 100 threads: ~1 list request per round, not 100 GETs."""
    url = emu.job_url("alice", "risk-analysis", "208")  # ~0.3 s per run at this time scale
    runs = [client.create_run(url, {"WINDOW": str(i)}) for i in range(100)]
    poller = RunPoller(client, poll_interval=0.05)
    results: list[JobRun] = []
    before = len(emu.requests())
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda r=run: results.append(poller.wait(r, on_change=None)))
        for run in runs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    lists = requests_to(emu, "v2.list_runs", before)
    gets = requests_to(emu, "v2.get_run", before)
    assert len(results) == 100 and all(r.status is RunStatus.SUCCEEDED for r in results)
    rounds = elapsed / 0.05 + 2
    print(f"shared: {len(lists)} list + {len(gets)} get requests for 100 runs in {elapsed:.2f} s")
    assert len(lists) + len(gets) <= 2 * rounds  # one page per round (page size 100)
    assert len(lists) + len(gets) < 100  # fewer than one GET per run for a single round


def test_async_wait_tolerates_flaky_polls_and_stops_on_cancel(emu: Emulator) -> None:
    settings = CMLSettings.load(host=None, api_v2_key=DEFAULT_V2_KEY)

    async def scenario() -> None:
        async with AsyncCMLClient(settings, retry=RETRY) as cml:
            run = await cml.create_run(emu.job_url("alice", "risk-analysis", "208"))
            emu.inject(Fault(endpoint="v2.get_run", kind="503", times=3))
            done = await async_wait_for_run(cml, run, poll_interval=0.05)
            assert done.status is RunStatus.SUCCEEDED

            long = await cml.create_run(emu.job_url("alice", "risk-analysis", "211"))
            waiter = asyncio.create_task(async_wait_for_run(cml, long, poll_interval=0.05))
            await asyncio.sleep(0.2)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert next(r for r in emu.runs() if r["id"] == long.id)["stop_requested"]

            late = await cml.create_run(emu.job_url("alice", "risk-analysis", "211"))
            with pytest.raises(CMLWaitTimeout):
                await async_wait_for_run(cml, late, poll_interval=0.05, max_wait=0.2)
            assert next(r for r in emu.runs() if r["id"] == late.id)["stop_requested"]

    asyncio.run(scenario())


# --- the deadline: a run that ended meanwhile, an unreachable CML, garbled polls -------------


def test_run_ending_after_the_last_poll_is_reported_as_it_ended() -> None:
    """Job 208 succeeds at +1.4 s; with polls every 10 s the only poll before the 3 s deadline
    saw it running. The stop call's answer says SUCCEEDED: that is the outcome, not a stop."""
    from typer.testing import CliRunner

    from cml_tasks.cli import ExitCode, app

    with Emulator() as cml:
        url = cml.job_url("alice", "risk-analysis", "208")
        started = time.monotonic()
        result = CliRunner().invoke(
            app,
            ["start", url, "--wait", "--poll", "10s", "--timeout", "3s"],
            env={"CML_API_V2_KEY": DEFAULT_V2_KEY},
        )
        elapsed = time.monotonic() - started
        assert result.exit_code == ExitCode.OK, result.output
        assert "succeeded" in result.output and "stopped it" not in result.output
        assert cml.runs()[-1]["status"] == RunStatus.SUCCEEDED.value
        assert elapsed < 6, elapsed  # slept until the deadline, not a whole poll interval


def test_unreachable_cml_at_the_deadline_says_could_not_stop(emu: Emulator) -> None:
    """CML stops answering mid-wait: the wait still ends near its deadline, and it never
    claims to have stopped a run it could not reach."""
    from typer.testing import CliRunner

    from cml_tasks.cli import ExitCode, app

    url = emu.job_url("alice", "risk-analysis", "211")
    emu.inject(Fault(endpoint="v2.get_run", kind="drop"))
    emu.inject(Fault(endpoint="v2.stop_run", kind="drop"))
    since = len(emu.requests())
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        ["start", url, "--wait", "--poll", "1s", "--timeout", "3s"],
        env={"CML_API_V2_KEY": DEFAULT_V2_KEY, "CML_TIMEOUT": "2"},
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == ExitCode.WAIT_TIMEOUT, result.output
    assert "could not stop it" in result.output
    assert "stopped it" not in result.output
    assert elapsed < 3 + 2 * 2 + 1, elapsed  # the deadline plus request timeouts, no retries
    assert len(requests_to(emu, "v2.stop_run", since)) == 1  # one try at the deadline


def test_garbled_polls_fail_the_wait_instead_of_polling_forever(
    emu: Emulator, client: CMLClient
) -> None:
    run = client.create_run(emu.job_url("alice", "risk-analysis", "211"))
    emu.inject(Fault(endpoint="v2.get_run", kind="answer", body="<html>proxy login</html>"))
    since = len(emu.requests())
    from cml_tasks import CMLProtocolError

    with pytest.raises(CMLProtocolError, match="without a JSON object"):
        wait_for_run(client, run, poll_interval=0.05, max_wait=30, on_change=None)
    assert len(requests_to(emu, "v2.get_run", since)) == 1  # not retried, not polled again
    client.stop_run(run.job, run.id)


def test_garbled_polls_fail_the_async_wait(emu: Emulator) -> None:
    from cml_tasks import CMLProtocolError

    async def follow() -> None:
        settings = CMLSettings.load(host=None, api_v2_key=DEFAULT_V2_KEY)
        async with AsyncCMLClient(settings, retry=RETRY) as cml:
            run = await cml.create_run(emu.job_url("alice", "risk-analysis", "211"))
            emu.inject(Fault(endpoint="v2.get_run", kind="answer", body='{"id": "a b"}'))
            with pytest.raises(CMLProtocolError, match="invalid fields"):
                await async_wait_for_run(cml, run, poll_interval=0.05, on_change=None)
            await cml.stop_run(run.job, run.id)

    asyncio.run(follow())
