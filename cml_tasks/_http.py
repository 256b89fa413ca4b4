"""Turn HTTP answers and transport failures into the typed errors of `cml_tasks.errors`.

Shared by the sync and async clients. `idempotent` decides what an ambiguous failure means:
for a start (not idempotent) it is "outcome unknown", for a read it is a retryable error.

Answers are read with a size cap and a time budget (`AnswerReader`): a hostile or broken
server can neither exhaust memory with a huge body nor hold a call open by dripping bytes.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

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


class AnswerReader:
    """Collects a streamed answer's decoded body up to `limit` bytes, within `budget` seconds.

    Feed it the chunks of `iter_bytes()` (sync or async); `add` says when to stop reading.
    A body still arriving after the budget raises `httpx.ReadTimeout`, which the classifier
    treats as any answer that never came.
    """

    def __init__(self, response: httpx.Response, *, limit: int, budget: float) -> None:
        self.original = response
        self.limit = limit
        self.deadline = time.monotonic() + budget
        self.budget = budget
        self.chunks: list[bytes] = []
        self.size = 0
        declared = response.headers.get("content-length", "")
        self.complete = not (declared.isdigit() and int(declared) > limit)

    def wants_more(self) -> bool:
        """False once the answer is known to be too large: read no further."""
        return self.complete

    def add(self, chunk: bytes) -> bool:
        """Keep a chunk; False when the body passed the cap (it is then cut there)."""
        if time.monotonic() > self.deadline:
            raise httpx.ReadTimeout(f"the answer was still arriving after {self.budget:g} s")
        room = self.limit - self.size
        self.chunks.append(chunk[:room])
        self.size += min(len(chunk), room)
        if len(chunk) > room:
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


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in a text that might be shown to a person, also as a repr or
    without surrounding whitespace would show it (`b'Bearer <key>\\r'`)."""
    forms = {form for secret in secrets for form in (secret, secret.strip(), repr(secret)[1:-1])}
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, "***")
    return text


def json_body(response: httpx.Response) -> object:
    """The decoded JSON body, or None when it is not JSON (or nested past the parser's limit)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def server_message(response: httpx.Response) -> str | None:
    """The `message` (or `error`) of a CML error body, else a short slice of the text."""
    body = json_body(response)
    if body is None:
        text = response.text.strip()
        return text[:200] or None
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:1000]
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
    message = server_message(response)
    kwargs = {
        "status_code": status,
        "server_message": redact(message, secrets) if message else None,
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
