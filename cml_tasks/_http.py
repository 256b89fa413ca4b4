"""Turn HTTP answers and transport failures into the typed errors of `cml_tasks.errors`.

Shared by the sync and async clients. `idempotent` decides what an ambiguous failure means:
for a start (not idempotent) it is "outcome unknown", for a read it is a retryable error.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from cml_tasks._retry import parse_retry_after
from cml_tasks.errors import (
    CMLAuthError,
    CMLError,
    CMLHTTPError,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLRequestRejected,
    CMLServerError,
    CMLThrottled,
    CMLTransportError,
)

# Failures that happen before a single byte of the request left this machine.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# 501: the server does not implement the call; 503: it refused to take work. Neither started it.
_SURELY_NOT_DONE = {501, 503}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in a text that might be shown to a person."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def server_message(response: httpx.Response) -> str | None:
    """The `message` (or `error`) of a CML error body, else a short slice of the text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] or None
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
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
    exc: httpx.TransportError, *, action: str, idempotent: bool, job_url: str | None
) -> CMLError:
    """The typed error for a request that got no answer."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return CMLTransportError(f"{action}: could not reach CML ({reason})", job_url=job_url)
    if idempotent:
        return CMLTransportError(f"{action}: no answer from CML ({reason})", job_url=job_url)
    return CMLOutcomeUnknown(
        f"{action}: outcome unknown, the request was sent but no answer came ({reason}); "
        "the run may have started, so it is not retried",
        job_url=job_url,
    )
