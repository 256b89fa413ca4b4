"""The v1 client against the emulator over real sockets: starts, typed errors, safe retries."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

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


# --- answers the emulator cannot give: a tiny raw-socket server ------------------------------


class RawServer:
    """A raw HTTP/1.1 server on a local port, for answers the emulator cannot give (a
    `100 Continue` flood, headers dripped byte by byte, a binary gzip bomb, a TLS handshake
    that never ends): `answer(connection, request_head)` answers each request."""

    def __init__(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        self.answer = answer
        self.stop = threading.Event()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/alice/risk-analysis/jobs/208", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            try:
                while not self.stop.is_set():
                    head = b""
                    while b"\r\n\r\n" not in head:
                        data = connection.recv(65536)
                        if not data:
                            return
                        head += data
                    head, _, body = head.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    while length and len(body) < int(length.group(1)):
                        body += connection.recv(65536)
                    self.answer(connection, head)
            except OSError:
                return  # the client hung up: done

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._listener.close()


def answer_bytes(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_total_deadline_holds_against_a_100_continue_flood() -> None:
    """Issue item 7: `100 Continue` every second held `start` past 100 s with CML_TIMEOUT=30;
    httpx's read timeout restarts with every byte. CML_TIMEOUT now bounds the whole request:
    the start, sent, ends as outcome unknown within CML_TIMEOUT."""

    def flood(connection: socket.socket, head: bytes) -> None:
        while not server.stop.is_set():
            connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(1.0)

    with RawServer(flood) as server, client(timeout=2) as c:
        began = time.monotonic()
        with pytest.raises(CMLOutcomeUnknown, match="headers had not arrived after 2 s") as caught:
            c.start(server.url(), JANUARY)
        took = time.monotonic() - began
    assert took < 2 + 1.5, took
    assert "CML_TIMEOUT, in total" in str(caught.value)
    assert server.connections == 1  # a start that may have happened is never sent again


def test_total_deadline_holds_against_headers_dripped_byte_by_byte() -> None:
    """Issue item 7: headers at 1 byte/s: each read succeeds, so only a total deadline ends
    it. The read (v2) is retried as the policy says, each try within CML_TIMEOUT."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    def drip(connection: socket.socket, _: bytes) -> None:
        for index in range(len(head)):
            if server.stop.is_set():
                return
            connection.sendall(head[index : index + 1])
            time.sleep(1.0)

    retry = RetryPolicy(attempts=2, timeout=10, wait_initial=0.01, wait_max=0.01)
    with (
        RawServer(drip) as server,
        CMLClient(settings(timeout=2), retry=retry) as c,
    ):
        began = time.monotonic()
        with pytest.raises(CMLOutcomeUnknown, match="headers had not arrived after 2 s"):
            c.start(server.url(), JANUARY)
        assert time.monotonic() - began < 2 + 1.5
        assert server.connections == 1


def test_total_deadline_in_the_async_client() -> None:
    """Issue item 7, the async twin: the same deadline bounds each socket operation."""

    def flood(connection: socket.socket, head: bytes) -> None:
        while not server.stop.is_set():
            connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.5)

    async def main() -> None:
        async with AsyncCMLClient(settings(timeout=1.5), retry=FAST_RETRY) as c:
            await c.start(server.url(), JANUARY)

    with RawServer(flood) as server:
        began = time.monotonic()
        with pytest.raises(CMLOutcomeUnknown, match=r"had not arrived after 1\.5 s"):
            asyncio.run(main())
        assert time.monotonic() - began < 1.5 + 1.5


def test_total_deadline_before_sending_is_a_transport_error() -> None:
    """Issue item 7: a TLS handshake that never ends (CML_CONNECT_TIMEOUT=10) is cut by
    CML_TIMEOUT=1; nothing was sent, so it is a transport error, retried like one."""

    def silent(connection: socket.socket, _: bytes) -> None:
        server.stop.wait()

    retry = RetryPolicy(attempts=2, timeout=10, wait_initial=0.01, wait_max=0.01)
    with (
        RawServer(silent) as server,
        CMLClient(settings(timeout=1, connect_timeout=10), retry=retry) as c,
    ):
        began = time.monotonic()
        with pytest.raises(CMLTransportError, match="before the request was sent") as caught:
            c.start(server.url(scheme="https"), JANUARY)
        took = time.monotonic() - began
    assert not isinstance(caught.value, CMLOutcomeUnknown)
    assert "could not reach CML" in str(caught.value)
    assert took < 2 * 1 + 1.5, took
    assert server.connections == 2  # retried: surely not started


def test_body_shares_the_deadline_with_the_headers() -> None:
    """The body's budget is what the request's deadline leaves, not a fresh CML_TIMEOUT:
    headers after 1 s, then a body at 5 bytes/s, end at CML_TIMEOUT (1.5 s) in total."""
    body = json.dumps({"engine_id": "abcdefgh12345678"}).encode()

    def slow(connection: socket.socket, _: bytes) -> None:
        time.sleep(1.0)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode())  # the head at once; then the body, slowly
        for index in range(len(body)):
            if server.stop.is_set():
                return
            connection.sendall(body[index : index + 1])
            time.sleep(0.2)

    with RawServer(slow) as server, client(timeout=1.5) as c:
        began = time.monotonic()
        with pytest.raises(CMLOutcomeUnknown, match=r"still arriving after 1\.5 s"):
            c.start(server.url(), JANUARY)
        took = time.monotonic() - began
    assert 1.0 < took < 1.5 + 0.7, took


@pytest.mark.parametrize("client_class", [CMLClient, AsyncCMLClient])
def test_total_deadline_is_installed_on_every_pool(
    monkeypatch: pytest.MonkeyPatch, client_class: type[CMLClient] | type[AsyncCMLClient]
) -> None:
    """Pins the httpx/httpcore internals `enforce_deadlines` relies on (`_transport`,
    `_mounts`, `_pool._network_backend`): the client's own pool and an environment proxy's."""
    from cml_tasks._http import enforce_deadlines

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    c = client_class(settings())
    http = c._http
    pools = [http._transport, *(t for t in http._mounts.values() if t is not None)]
    assert len(pools) >= 2
    for transport in pools:
        backend = getattr(transport, "_pool")._network_backend  # noqa: B009
        assert type(backend).__name__ in ("_DeadlineBackend", "_AsyncDeadlineBackend")
    assert enforce_deadlines(http) == 0  # already in place: not wrapped twice
    if isinstance(c, CMLClient):
        c.close()
    else:
        asyncio.run(c.aclose())


# --- compressed answers: decoded under the cap ---------------------------------------------


@functools.cache
def gzip_bomb(gib: int = 1) -> bytes:
    """`gib` GiB of zeros as one valid gzip member of about 1 MiB, built in well under a
    second: after a full flush every MiB of zeros compresses to the same bytes."""
    mib, zeros = 1 << 20, bytes(1 << 20)
    chunks = 1024 * gib
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    steady = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)[:-8]  # the last block; the trailer comes below
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (chunks * mib) & 0xFFFFFFFF)
    return first + steady * (chunks - 1) + end + trailer


def gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def bomb_server(body: bytes, encoding: str) -> Callable[[socket.socket, bytes], None]:
    """Answers the v2 lookups of alice/risk-analysis/208 plainly, and a start or a run
    listing with `body` under `Content-Encoding: encoding`."""
    project = {"id": "p1", "name": "risk-analysis", "owner": {"username": "alice"}}
    plain = {
        b"/api/v2/projects?": {"projects": [project]},
        b"/api/v2/projects/p1/jobs?": {"jobs": [{"id": "208", "name": "daily"}]},
    }

    def answer(connection: socket.socket, head: bytes) -> None:
        target = head.split(b" ")[1]
        for prefix, value in plain.items():
            if target.startswith(prefix):
                connection.sendall(answer_bytes("200 OK", {}, json.dumps(value).encode()))
                return
        # Chunked, without a Content-Length the client could refuse the answer by.
        reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        reply += f"Content-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n"
        connection.sendall(reply.encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    return answer


_MEMORY_PROBE = """
import json, resource, sys, time, tracemalloc
from cml_tasks import CMLClient, CMLSettings, RetryPolicy
from cml_tasks.errors import CMLError

url, call = sys.argv[1], sys.argv[2]
settings = CMLSettings.load(_env_file=None, api_key="k" * 24, api_v2_key="v" * 24, timeout=20)
with CMLClient(settings, retry=RetryPolicy(attempts=1)) as client:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    began = time.monotonic()
    try:
        client.start(url) if call == "start" else client.list_runs_page(url)
        outcome = "no error"
    except CMLError as error:
        outcome = f"{type(error).__name__}: {error}"
    took = time.monotonic() - began
    traced = tracemalloc.get_traced_memory()[1]
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"outcome": outcome, "seconds": took, "grew_mib": grew / 1024,
                  "traced_peak_mib": traced / 2**20}))
"""


def probe_memory(url: str, call: str) -> dict[str, Any]:
    """Runs one call in a fresh interpreter: how much its peak resident memory (ru_maxrss)
    grew, and the peak of what Python allocated during it (tracemalloc: every bytes object
    a decoder returns), which the interpreter's own start-up peak cannot hide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_")}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, url, call],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("stacked", "call", "error", "message"),
    [
        (False, "start", "CMLOutcomeUnknown", "with more than 1048576 bytes"),
        (False, "list", "CMLProtocolError", "with more than 8388608 bytes"),
        (True, "start", "CMLOutcomeUnknown", "more than one content-coding"),
        (True, "list", "CMLProtocolError", "more than one content-coding"),
    ],
    ids=["gzip start", "gzip list", "gzip-gzip start", "gzip-gzip list"],
)
def test_gzip_bomb_is_capped_while_decoding(
    stacked: bool, call: str, error: str, message: str
) -> None:
    """Issue item 8: 1 GiB of zeros, gzipped (about 1 MiB) or gzipped twice (about 2 KiB),
    took 2.1 GB of memory before the cap applied. Now the cap holds while decoding, and a
    stack of codings is refused unread: the peak grows by a few MiB at most (the issue's
    limit: under 300 MB)."""
    bomb = gzip_bomb()
    body, encoding = (gzip(bomb), "gzip, gzip") if stacked else (bomb, "gzip")
    with RawServer(bomb_server(body, encoding)) as server:
        result = probe_memory(server.url(), call)
    assert result["outcome"].startswith(error), result
    assert message in result["outcome"], result
    assert result["grew_mib"] < 64, result
    assert result["traced_peak_mib"] < 64, result
    assert result["seconds"] < 5, result


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, no zlib wrapper
        ("identity", lambda data: data),
    ],
    ids=["gzip", "deflate", "raw deflate", "identity"],
)
def test_compressed_answers_are_still_decoded(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    body = encode(json.dumps({"engine_id": "abcdefgh12345678"}).encode())
    with RawServer(bomb_server(body, encoding)) as server, client() as c:
        assert c.start(server.url()).engine_id == "abcdefgh12345678"


def test_stacked_content_encoding_to_a_start_is_outcome_unknown(
    cml: Emulator, job_url: str
) -> None:
    """Issue item 8 on the emulator: a start's 2xx with two content-codings is refused
    before a byte is decoded; the run may have started."""
    cml.inject(
        Fault(
            endpoint="v1.start",
            kind="answer",
            headers={"Content-Encoding": "gzip, gzip"},
            body="never decoded",
        )
    )
    with client() as c, pytest.raises(CMLOutcomeUnknown, match="more than one content-coding"):
        c.start(job_url, JANUARY)
    assert start_calls(cml) == 1


# --- secrets in messages ---------------------------------------------------------------------


def test_basic_auth_header_echoed_back_is_redacted(cml: Emulator, job_url: str) -> None:
    """Issue item 15: a server echoing `Authorization: Basic <base64 of key:>` showed the v1
    key, base64-encoded; every base64 form of it is redacted, padded or not."""
    encoded = base64.b64encode(f"{DEFAULT_V1_KEY}:".encode()).decode()
    for shown in (encoded, encoded.rstrip("=")):
        cml.clear_faults()
        message = {"message": f"bad header Authorization: Basic {shown}"}
        cml.inject(Fault(endpoint="v1.start", kind="answer", status=401, body=json.dumps(message)))
        with client() as c, pytest.raises(CMLAuthError) as caught:
            c.start(job_url, JANUARY)
        text = str(caught.value) + repr(caught.value) + str(caught.value.server_message)
        assert encoded[:12] not in text
        assert "Authorization: Basic ***" in text


@pytest.mark.parametrize("json_body", [True, False], ids=["json message", "text body"])
def test_key_crossing_the_message_cut_is_redacted(
    cml: Emulator, job_url: str, json_body: bool
) -> None:
    """Issue item 15: messages were cut (1000 characters of a JSON message, 200 of a text
    body) before redaction, so a key across the cut showed its first characters."""
    cut = 1000 if json_body else 200
    echoed = "x" * (cut - 10) + DEFAULT_V1_KEY
    body = json.dumps({"message": echoed}) if json_body else echoed
    headers = {} if json_body else {"Content-Type": "text/plain"}
    cml.inject(Fault(endpoint="v1.start", kind="answer", status=400, body=body, headers=headers))
    with client() as c, pytest.raises(CMLRequestRejected) as caught:
        c.start(job_url, JANUARY)
    text = str(caught.value) + repr(caught.value)
    assert DEFAULT_V1_KEY[:6] not in text
    assert "***" in text
