"""Typed exceptions: one class per thing a caller can act on differently.

Every error carries the job's page URL (when known) and the server's message, never the key.
"""

from __future__ import annotations

from typing import Any


class CMLError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str, *, job_url: str | None = None) -> None:
        self.job_url = job_url
        super().__init__(f"{message} (job: {job_url})" if job_url else message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by state, not by constructor: Prefect persists failed tasks' exceptions."""
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[CMLError], args: tuple[Any, ...], state: dict[str, Any]) -> CMLError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CMLConfigError(CMLError):
    """Settings are missing or malformed; names each variable to set."""


class CMLInputError(CMLError, ValueError):
    """Bad input (job URL, environment, window...): raised before any request is sent."""


class CMLHTTPError(CMLError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        server_message: str | None = None,
        job_url: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.server_message = server_message
        self.request_id = request_id
        detail = f"HTTP {status_code}"
        if server_message:
            detail += f": {server_message}"
        if request_id:
            detail += f" [x-request-id {request_id}]"
        super().__init__(f"{message} ({detail})", job_url=job_url)


class CMLAuthError(CMLHTTPError):
    """401/403: the key is wrong, revoked, or lacks access to this job."""


class CMLNotFoundError(CMLHTTPError):
    """404: no such user, project, job or run."""


class CMLRequestRejected(CMLHTTPError):
    """Another 4xx: the server refused the request as sent."""


class CMLThrottled(CMLHTTPError):
    """429 (after retries): the server asked us to slow down."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class CMLServerError(CMLHTTPError):
    """5xx, after retries: any 5xx for a read, and 501/503 (surely not done) for a start.

    A 500/502/504 to a start is `CMLOutcomeUnknown` instead: the run may have started.
    """


class CMLProtocolError(CMLError):
    """CML answered 2xx with something unreadable or invalid (not JSON, a wrong shape, an id
    of the wrong form, an oversized body). Not retryable: asking again gets the same answer.

    For a start, the same answer is `CMLOutcomeUnknown`: the run may have started.
    """


class CMLTransportError(CMLError):
    """No usable answer: the server could not be reached, or (for a read) did not answer."""


class CMLTLSError(CMLTransportError):
    """The server's TLS certificate failed verification: a setting to fix, never retried."""


class CMLOutcomeUnknown(CMLError):
    """A start may or may not have happened (read timeout, dropped connection, 500/502/504).

    Never retried blindly: retrying could start the job twice. Reconcile through API v2.
    """


class CMLRecordError(CMLError):
    """A window record on the Prefect server could not be written (its API kept failing).

    Said of a window whose CML start went through: the run exists, its record still says
    `starting`, and once the claim's lease ends a rerun adopts the run (API v2) or reports
    the window's outcome unknown (v1 only), never starting it again.
    """


class CMLWaitCancelled(CMLError):
    """Following a run was cancelled (e.g. the Prefect flow run was); the run was stopped."""


class BackfillFailed(CMLError):
    """Some windows of a backfill failed; the message lists each with why."""
