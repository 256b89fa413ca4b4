"""The v1 client against the emulator over real sockets: starts, typed errors, safe retries."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import respx

from cml_tasks import (
    AsyncCMLClient,
    CMLAuthError,
    CMLClient,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLRequestRejected,
    CMLServerError,
    CMLSettings,
    CMLThrottled,
    CMLTransportError,
    RetryPolicy,
)
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault

JANUARY = {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}
FAST_RETRY = RetryPolicy(attempts=4, timeout=10.0, wait_initial=0.01, wait_max=0.05)


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def job_url(cml: Emulator) -> str:
    return cml.job_url("alice", "risk-analysis", "208")


def settings(key: str = DEFAULT_V1_KEY, **overrides: object) -> CMLSettings:
    return CMLSettings.load(_env_file=None, api_key=key, **overrides)  # type: ignore[arg-type]


def client(key: str = DEFAULT_V1_KEY, **overrides: object) -> CMLClient:
    return CMLClient(settings(key, **overrides), retry=FAST_RETRY)


def starts(cml: Emulator) -> list[dict[str, str]]:
    return [run["environment"] for run in cml.runs()]


def start_calls(cml: Emulator) -> int:
    return sum(1 for request in cml.requests() if request["endpoint"] == "v1.start")


def test_start_with_environment(cml: Emulator, job_url: str) -> None:
    with client() as c:
        run = c.start(job_url, JANUARY)
    assert re.fullmatch(r"[a-z0-9]{16}", run.engine_id)
    assert run.job_url == job_url
    assert run.environment == JANUARY
    assert starts(cml) == [JANUARY]
    assert cml.runs()[0]["id"] == run.engine_id


def test_start_without_environment_sends_empty_json_body(cml: Emulator, job_url: str) -> None:
    with client() as c:
        c.start(job_url)
    assert starts(cml) == [{}]


def test_job_by_parts_with_host_from_settings(cml: Emulator) -> None:
    with client(host=cml.url) as c:
        run = c.start("alice/risk-analysis/208", JANUARY)
    assert run.job_url == cml.job_url("alice", "risk-analysis", "208")


def test_one_connection_pool_reused_across_starts(cml: Emulator, job_url: str) -> None:
    opened: list[str] = []

    class CountingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            opened.append(str(response.extensions.get("network_stream")))
            return response

    with CMLClient(settings(), transport=CountingTransport()) as c:
        for day in range(1, 21):
            c.start(job_url, {"DAY": str(day)})
    assert len(starts(cml)) == 20
    assert len(set(opened)) == 1  # one connection, kept alive across all 20 starts


@pytest.mark.parametrize(
    ("key", "path", "error", "status"),
    [
        ("wrong-key", ("alice", "risk-analysis", "208"), CMLAuthError, 401),
        (DEFAULT_V1_KEY, ("alice", "risk-analysis", "999"), CMLNotFoundError, 404),
        (DEFAULT_V1_KEY, ("alice", "no-such-project", "208"), CMLNotFoundError, 404),
        (DEFAULT_V1_KEY, ("nobody", "risk-analysis", "208"), CMLNotFoundError, 404),
    ],
)
def test_typed_errors_carry_job_url_and_server_message(
    cml: Emulator, key: str, path: tuple[str, str, str], error: type[Exception], status: int
) -> None:
    url = cml.job_url(*path)
    with client(key) as c, pytest.raises(error) as caught:
        c.start(url, JANUARY)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.server_message  # type: ignore[attr-defined]
    assert url in str(caught.value)
    assert DEFAULT_V1_KEY not in str(caught.value) and key not in str(caught.value)
    assert start_calls(cml) == 1  # not retried
    assert starts(cml) == []


def test_other_users_project_is_an_auth_error(cml: Emulator) -> None:
    bob = next(user for user in cml.config.users if user.username == "bob")
    with client(bob.v1_key) as c, pytest.raises(CMLAuthError) as caught:
        c.start(cml.job_url("alice", "risk-analysis", "208"))
    assert caught.value.status_code == 403


def test_throttled_start_is_retried_honouring_retry_after(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="429", calls=[1, 2], retry_after=1))
    with client() as c:
        run = c.start(job_url, JANUARY)
    assert start_calls(cml) == 3
    assert starts(cml) == [JANUARY]
    assert run.engine_id == cml.runs()[0]["id"]
    answered = [r for r in cml.requests() if r["endpoint"] == "v1.start"]
    assert [r["status"] for r in answered] == [429, 429, 200]


def test_throttling_beyond_the_budget_raises_throttled(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="429", retry_after=3600))
    with client() as c, pytest.raises(CMLThrottled) as caught:
        c.start(job_url, JANUARY)
    assert caught.value.retry_after == pytest.approx(3600, abs=1)
    assert start_calls(cml) == 1  # waiting an hour would break the time budget: give up now
    assert starts(cml) == []


def test_503_is_retried_then_reported(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="503"))
    with client() as c, pytest.raises(CMLServerError) as caught:
        c.start(job_url, JANUARY)
    assert caught.value.status_code == 503
    assert start_calls(cml) == FAST_RETRY.attempts
    assert starts(cml) == []


@pytest.mark.parametrize("kind", ["500", "502", "504", "drop"])
def test_maybe_started_is_outcome_unknown_and_never_retried(
    cml: Emulator, job_url: str, kind: str
) -> None:
    cml.inject(Fault(endpoint="v1.start", kind=kind, calls=[1]))
    with client() as c, pytest.raises(CMLOutcomeUnknown, match="may have started") as caught:
        c.start(job_url, JANUARY)
    assert job_url in str(caught.value)
    assert start_calls(cml) == 1


def test_lost_answer_started_the_run_once_and_says_so(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=[1]))
    with client() as c, pytest.raises(CMLOutcomeUnknown):
        c.start(job_url, JANUARY)
    assert starts(cml) == [JANUARY]  # it did start: retrying would have started it twice
    assert start_calls(cml) == 1


def test_read_timeout_is_outcome_unknown(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="latency", seconds=1.0, calls=[1]))
    with client(timeout=0.3) as c, pytest.raises(CMLOutcomeUnknown, match="ReadTimeout"):
        c.start(job_url, JANUARY)
    deadline = time.monotonic() + 5
    while not cml.runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert starts(cml) == [JANUARY]  # the slow server did start it: a retry would start it twice
    assert start_calls(cml) == 1


def test_connection_refused_is_retried_then_a_transport_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/alice/risk-analysis/jobs/208"
    attempts: list[httpx.Request] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            attempts.append(request)
            return super().handle_request(request)

    with (
        CMLClient(settings(), retry=FAST_RETRY, transport=Recording()) as c,
        pytest.raises(CMLTransportError, match="could not reach CML"),
    ):
        c.start(url)
    assert len(attempts) == FAST_RETRY.attempts


def test_dns_failure_is_a_transport_error() -> None:
    with client() as c, pytest.raises(CMLTransportError):
        c.start("https://cml.invalid/alice/risk-analysis/jobs/208")


def test_other_4xx_is_rejected_with_server_message() -> None:
    with respx.mock() as mock:
        mock.post().mock(return_value=httpx.Response(422, json={"message": "job is paused"}))
        with client() as c, pytest.raises(CMLRequestRejected, match="job is paused"):
            c.start("https://cml.example.com/alice/risk-analysis/jobs/208")


def test_200_without_engine_id_is_outcome_unknown() -> None:
    with respx.mock() as mock:
        mock.post().mock(return_value=httpx.Response(200, text="<html>login</html>"))
        with client() as c, pytest.raises(CMLOutcomeUnknown, match="without an engine id"):
            c.start("https://cml.example.com/alice/risk-analysis/jobs/208")


def test_server_echoing_the_key_is_redacted() -> None:
    with respx.mock() as mock:
        mock.post().mock(
            return_value=httpx.Response(401, json={"message": f"bad key {DEFAULT_V1_KEY}"})
        )
        with client() as c, pytest.raises(CMLAuthError) as caught:
            c.start("https://cml.example.com/alice/risk-analysis/jobs/208")
    assert DEFAULT_V1_KEY not in str(caught.value)
    assert "***" in str(caught.value)


def test_key_never_logged(cml: Emulator, job_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cml.inject(Fault(endpoint="v1.start", kind="429", calls=[1], retry_after=0))
    with client() as c:
        c.start(job_url, JANUARY)
    assert caplog.records  # httpx did log the requests
    assert DEFAULT_V1_KEY not in caplog.text


def test_async_client(cml: Emulator, job_url: str) -> None:
    async def main() -> list[str]:
        async with AsyncCMLClient(settings(), retry=FAST_RETRY) as c:
            runs = await asyncio.gather(*(c.start(job_url, {"N": str(n)}) for n in range(5)))
            with pytest.raises(CMLNotFoundError):
                await c.start(cml.job_url("alice", "risk-analysis", "404"))
            return [run.engine_id for run in runs]

    engine_ids = asyncio.run(main())
    assert sorted(engine_ids) == sorted(run["id"] for run in cml.runs())
    assert sorted(env["N"] for env in starts(cml)) == ["0", "1", "2", "3", "4"]


def test_async_client_outcome_unknown(cml: Emulator, job_url: str) -> None:
    cml.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=[1]))

    async def main() -> None:
        async with AsyncCMLClient(settings(), retry=FAST_RETRY) as c:
            await c.start(job_url, JANUARY)

    with pytest.raises(CMLOutcomeUnknown):
        asyncio.run(main())
    assert starts(cml) == [JANUARY]
