"""Turn HTTP answers and transport failures into the typed errors of `cml_tasks.errors`.

Shared by the sync and async clients. `idempotent` decides what an ambiguous failure means:
for a start (not idempotent) it is "outcome unknown", for a read it is a retryable error.

Answers are read with a size cap, decoded as they arrive (`AnswerReader`), within one total
deadline per request (`request_deadline`, on sockets `enforce_deadlines` bounds): a hostile or
broken server can neither exhaust memory with a huge or compressed body nor hold a call open by
dripping bytes or `100 Continue`s.
"""

from __future__ import annotations

import base64
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore
import httpx

from cml_tasks._retry import parse_retry_after
from cml_tasks._text import printable
from cml_tasks.errors import (
    CMLAuthError,
    CMLError,
    CMLHTTPError,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLProtocolError,
    CMLRequestRejected,
    CMLServerError,
    CMLThrottled,
    CMLTLSError,
    CMLTransportError,
)

ONE_OBJECT = 1 << 20
"""Byte cap of an answer holding one object (a run, a started engine, an error)."""
LIST_PAGE = 8 << 20
"""Byte cap of an answer holding a page of a list."""
# Headers that describe the body as it came over the wire, not as it was decoded.
_WIRE_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}

# Failures that happen before a single byte of the request left this machine.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# 501: the server does not implement the call; 503: it refused to take work. Neither started it.
_SURELY_NOT_DONE = {501, 503}


class Deadline:
    """One request's total time limit (`CML_TIMEOUT`): connect, send, headers and body.

    httpx's timeouts are per socket operation, so a server answering `100 Continue` every
    second, or dripping its headers a byte at a time, would hold a call open forever. Every
    socket operation of a client made by `enforce_deadlines` is cut to the time this
    deadline leaves; `sent` and `answered` say how far the request got, which decides
    whether a start that ran out of time may have happened.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.at = time.monotonic() + budget
        self.sent = False
        """A byte of the request may have left: from the first write on."""
        self.answered = False
        """The answer's headers arrived: from then on only the body is outstanding."""

    def remaining(self) -> float:
        """Seconds left; zero or less once the deadline has passed."""
        return self.at - time.monotonic()

    def expired(self, operation: str) -> httpcore.TimeoutException:
        """The error for running out of time: before sending it is a connect timeout (the
        request surely had no effect), after it a write or read timeout (it may have)."""
        total = f"{self.budget:g} s (CML_TIMEOUT, in total)"
        if not self.sent:
            return httpcore.ConnectTimeout(f"{total} ran out before the request was sent")
        if operation == "write":
            return httpcore.WriteTimeout(f"the request was still being sent after {total}")
        if not self.answered:
            return httpcore.ReadTimeout(f"the answer's headers had not arrived after {total}")
        return httpcore.ReadTimeout(f"the answer was still arriving after {self.budget:g} s")


_DEADLINE: ContextVar[Deadline | None] = ContextVar("cml_tasks_deadline", default=None)


@contextmanager
def request_deadline(budget: float) -> Iterator[Deadline]:
    """Run one request (connect, send, headers, body) within `budget` seconds in total.

    A context variable, so each thread (sync client) or task (async client) has its own,
    while the connections of the client's pool are shared.
    """
    deadline = Deadline(budget)
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def _cut(timeout: float | None, operation: str) -> tuple[float | None, Deadline | None]:
    """An operation's own timeout cut to what the current request's deadline leaves; the
    deadline is returned when it did the cutting. Raises once the deadline has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout, None
    remaining = deadline.remaining()
    if remaining <= 0:
        raise deadline.expired(operation)
    if timeout is None or remaining < timeout:
        return remaining, deadline
    return timeout, None


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit, cutting = _cut(timeout, "read")
        try:
            return self._stream.read(max_bytes, limit)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("read") from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit, cutting = _cut(timeout, "write")
        deadline = _DEADLINE.get()
        if deadline is not None and buffer:
            deadline.sent = True
        try:
            self._stream.write(buffer, limit)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("write") from None

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, limit))
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens `_DeadlineStream`s; connecting, too, ends by the request's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            stream = self._backend.connect_tcp(host, port, limit, local_address, socket_options)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            stream = self._backend.connect_unix_socket(path, limit, socket_options)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    """`_DeadlineStream` for asyncio."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit, cutting = _cut(timeout, "read")
        try:
            return await self._stream.read(max_bytes, limit)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("read") from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit, cutting = _cut(timeout, "write")
        deadline = _DEADLINE.get()
        if deadline is not None and buffer:
            deadline.sent = True
        try:
            await self._stream.write(buffer, limit)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("write") from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            stream = await self._stream.start_tls(ssl_context, server_hostname, limit)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None
        return _AsyncDeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    """`_DeadlineBackend` for asyncio."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            stream = await self._backend.connect_tcp(
                host, port, limit, local_address, socket_options
            )
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None
        return _AsyncDeadlineStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        limit, cutting = _cut(timeout, "connect")
        try:
            stream = await self._backend.connect_unix_socket(path, limit, socket_options)
        except httpcore.TimeoutException:
            if cutting is None:
                raise
            raise cutting.expired("connect") from None
        return _AsyncDeadlineStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def enforce_deadlines(client: httpx.Client | httpx.AsyncClient) -> int:
    """Put every connection pool of `client` (its transport and any proxy mounts) on
    deadline-bound sockets; returns how many pools it changed.

    httpx offers no public way to pass httpcore a network backend, so this swaps the
    backend of each httpcore pool (`_pool._network_backend`: pinned by
    `tests/test_client.py::test_total_deadline_is_installed_on_every_pool`). A transport
    without a pool (a mock) is left alone: it has no sockets to bound.
    """
    mounts: dict[object, object] = getattr(client, "_mounts", {})
    changed = 0
    for transport in (getattr(client, "_transport", None), *mounts.values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        wrapped: object
        if isinstance(backend, _DeadlineBackend | _AsyncDeadlineBackend):
            continue
        if isinstance(backend, httpcore.NetworkBackend):
            wrapped = _DeadlineBackend(backend)
        elif isinstance(backend, httpcore.AsyncNetworkBackend):
            wrapped = _AsyncDeadlineBackend(backend)
        else:
            continue
        setattr(pool, "_network_backend", wrapped)  # noqa: B010 (a private attribute)
        changed += 1
    return changed


_ZLIB_CODINGS = {
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}
"""The content-codings an answer may use (the client's `Accept-Encoding`), as zlib `wbits`."""
ACCEPT_ENCODING = "gzip, deflate"
_KNOWN_CODINGS = {*_ZLIB_CODINGS, "br", "zstd", "compress", "x-compress"}


class _Decoder:
    """Decodes at most one content-coding, never more output per call than asked for.

    httpx's decoders expand a whole network chunk at once: 64 KiB of gzip can be 64 MiB of
    zeros, and gzip inside gzip gigabytes. Here each call yields at most `max_length` bytes,
    so the size cap holds while decoding, not after it.
    """

    def __init__(self, coding: str | None) -> None:
        self._coding = coding
        self._zlib = None if coding is None else zlib.decompressobj(_ZLIB_CODINGS[coding])
        self._first = True

    def decode(self, data: bytes, max_length: int) -> bytes:
        """Up to `max_length` (at least 1) decoded bytes of `data`; the rest is dropped."""
        first, self._first = self._first, False
        if self._zlib is None:
            return data[:max_length]
        try:
            return self._zlib.decompress(data, max_length)
        except zlib.error as exc:
            if first and self._coding == "deflate":  # "deflate" without the zlib wrapper
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.decode(data, max_length)
            raise httpx.DecodingError(f"{self._coding}: {exc}") from None


class AnswerReader:
    """Collects a streamed answer's decoded body up to `limit` bytes, within its deadline.

    Feed it the raw (still encoded) chunks of `iter_raw()` (sync or async); `add` decodes
    each without ever expanding past the cap, and says when to stop reading. More than one
    content-coding, or one the client did not ask for, is refused unread (`refused`): a
    stack of codings only serves to hide a decompression bomb. A body still arriving after
    the deadline raises `httpx.ReadTimeout`, which the classifier treats as any answer that
    never came.
    """

    def __init__(self, response: httpx.Response, *, limit: int, deadline: Deadline) -> None:
        self.original = response
        self.limit = limit
        self.deadline = deadline
        self.chunks: list[bytes] = []
        self.size = 0
        declared = response.headers.get("content-length", "")
        self.complete = not (declared.isdigit() and int(declared) > limit)
        self.refused: str | None = None
        """Why the body was not read (its content-coding), or None."""
        codings = [
            coding.lower()
            for coding in response.headers.get_list("content-encoding", split_commas=True)
            if coding and coding.lower() != "identity"
        ]
        # Only names of codings are shown: the header is server text (it could echo a key).
        shown = ", ".join(coding if coding in _KNOWN_CODINGS else "?" for coding in codings)
        self._decoder: _Decoder | None = None
        if len(codings) > 1:
            self.refused = (
                f"Content-Encoding '{shown}' (more than one content-coding, which can "
                "hide a decompression bomb)"
            )
        elif codings and codings[0] not in _ZLIB_CODINGS:
            self.refused = f"Content-Encoding '{shown}' (not one the client accepts)"
        else:
            self._decoder = _Decoder(codings[0] if codings else None)

    def wants_more(self) -> bool:
        """False once the answer is known to be too large or is refused: read no further."""
        return self.complete and self._decoder is not None

    def add(self, chunk: bytes) -> bool:
        """Decode and keep a raw chunk; False when the body passed the cap (cut there)."""
        if self.deadline.remaining() < 0:
            raise httpx.ReadTimeout(
                f"the answer was still arriving after {self.deadline.budget:g} s"
            )
        assert self._decoder is not None, "a refused answer is not read"
        room = self.limit - self.size
        data = self._decoder.decode(chunk, room + 1)
        self.chunks.append(data[:room])
        self.size += min(len(data), room)
        if len(data) > room:
            self.complete = False
        return self.complete

    def response(self) -> httpx.Response:
        """The answer with the body read so far, decoded, as an ordinary response."""
        headers = [
            (name, value)
            for name, value in self.original.headers.multi_items()
            if name.lower() not in _WIRE_HEADERS
        ]
        return httpx.Response(
            self.original.status_code,
            headers=headers,
            content=b"".join(self.chunks),
            request=self.original.request,
        )


def unreadable(detail: str, *, action: str, idempotent: bool, job_url: str | None) -> CMLError:
    """The error for a 2xx answer that cannot be used: for a start, the run may have started."""
    if idempotent:
        return CMLProtocolError(f"{action}: {detail}", job_url=job_url)
    return CMLOutcomeUnknown(
        f"{action}: {detail}; the run may have started, so it is not retried",
        job_url=job_url,
    )


def _secret_forms(secret: str) -> set[str]:
    """Every way a secret may show up in a server's or a library's text: as sent (the v2
    Bearer token), without surrounding whitespace, as a repr would show it, and base64-encoded
    as Basic auth sends the v1 key (`base64("<key>:")`, with and without padding), each
    also percent-encoded."""
    plain = {secret, secret.strip()}
    forms = plain | {repr(secret)[1:-1]}
    for text in plain:
        for credentials in (f"{text}:", text):
            encoded = base64.b64encode(credentials.encode("utf-8", "replace")).decode()
            forms |= {encoded, encoded.rstrip("=")}
    forms |= {quote(form, safe="") for form in forms}
    return {form for form in forms if form}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in a text that might be shown to a person, in every form
    `_secret_forms` lists (`b'Bearer <key>\\r'`, `Basic <base64 of key:>`).

    Redact whole texts, then cut them: a secret cut in two would no longer be found.
    """
    forms = {form for secret in secrets for form in _secret_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def json_body(response: httpx.Response) -> object:
    """The decoded JSON body, or None when it is not JSON (or nested past the parser's limit)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def server_message(response: httpx.Response, secrets: Iterable[str] = ()) -> str | None:
    """The `message` (or `error`) of a CML error body, else a short slice of the text;
    secrets are redacted before the cut, so no part of one survives it."""
    body = json_body(response)
    if body is None:
        text = redact(response.text, secrets).strip()
        return text[:200] or None
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return redact(str(body[key]), secrets)[:1000]
    return None


def error_for_response(
    response: httpx.Response,
    *,
    action: str,
    idempotent: bool,
    job_url: str | None,
    secrets: Iterable[str],
    key_setting: str = "CML_API_KEY",
) -> CMLError:
    """The typed error for a non-2xx answer; `key_setting` names the key to check on a 401."""
    status = response.status_code
    secrets = list(secrets)
    message = server_message(response, secrets)
    kwargs = {
        "status_code": status,
        "server_message": message,
        "job_url": job_url,
        "request_id": response.headers.get("x-request-id"),
    }
    if 300 <= status < 400:
        where = urlsplit(response.headers.get("location", "")).hostname
        target = f"to {printable(where)}" if where else "elsewhere"
        return CMLRequestRejected(
            f"{action}: CML redirected the request {target} instead of answering; check the "
            "host (CML_HOST or the job URL): redirects are not followed, to keep the key here",
            **{**kwargs, "server_message": None},
        )
    if status in (401, 403):
        hint = (
            f"check {key_setting}" if status == 401 else "the key's user lacks access to this job"
        )
        return CMLAuthError(f"{action}: authentication failed ({hint})", **kwargs)
    if status == 404:
        return CMLNotFoundError(f"{action}: not found", **kwargs)
    if status == 429:
        return CMLThrottled(
            f"{action}: throttled by CML",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            **kwargs,
        )
    if status < 500:
        return CMLRequestRejected(f"{action}: request rejected", **kwargs)
    if status in _SURELY_NOT_DONE or idempotent:
        return CMLServerError(f"{action}: CML server error", **kwargs)
    http_error = CMLHTTPError("server error", **kwargs)
    return CMLOutcomeUnknown(
        f"{action}: outcome unknown, the run may have started ({http_error}); "
        "not retried, to avoid starting the job twice",
        job_url=job_url,
    )


def error_for_transport(
    exc: httpx.TransportError,
    *,
    action: str,
    idempotent: bool,
    job_url: str | None,
    secrets: Iterable[str],
) -> CMLError:
    """The typed error for a request that got no answer; never shows a secret."""
    text = redact(str(exc), secrets)
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    tls = _tls_failure(exc)
    if tls is not None:
        return CMLTLSError(f"{action}: {tls} ({reason})", job_url=job_url)
    if isinstance(exc, _NOT_SENT):
        return CMLTransportError(f"{action}: could not reach CML ({reason})", job_url=job_url)
    if idempotent:
        return CMLTransportError(f"{action}: no answer from CML ({reason})", job_url=job_url)
    return CMLOutcomeUnknown(
        f"{action}: outcome unknown, the request was sent but no answer came ({reason}); "
        "the run may have started, so it is not retried",
        job_url=job_url,
    )


def _tls_failure(exc: BaseException) -> str | None:
    """What went wrong in the TLS handshake behind `exc`, or None when it was not TLS."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                "the server's TLS certificate is not trusted; set CML_CA_BUNDLE to your CA's "
                "PEM bundle (or, only to test, CML_VERIFY_TLS=false); not retried"
            )
        if isinstance(cause, ssl.SSLError):
            return (
                "the TLS handshake failed (is it an https:// server?); check CML_HOST, "
                "CML_CA_BUNDLE and CML_VERIFY_TLS; not retried"
            )
        cause = cause.__cause__ or cause.__context__
    return None
