"""When and how long to wait before trying a request again.

Only errors that prove the request had no effect are retried (see `is_retryable`): a start
that may have happened is never repeated, or the job would run twice.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

from cml_tasks.errors import (
    CMLError,
    CMLServerError,
    CMLThrottled,
    CMLTLSError,
    CMLTransportError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded both in attempts and in total time."""

    attempts: int = 5
    """Total tries, the first included."""
    timeout: float = 60.0
    """Seconds after the first try past which no new try starts."""
    wait_initial: float = 0.5
    wait_max: float = 10.0

    def start(self) -> RetryState:
        return RetryState(self)


NO_RETRY = RetryPolicy(attempts=1)
"""One try: for a call whose deadline leaves no time to try again."""

_testing = False


def set_testing(testing: bool) -> None:
    """Tests: retry as the policies say, but without waiting between tries (as stamina's
    `set_testing`), so exhausting a retry budget takes no time."""
    global _testing
    _testing = testing


def is_retryable(error: CMLError) -> bool:
    """Throttling, 5xx and failures before sending; the classifier maps the rest elsewhere.

    A TLS failure is a setting to fix, and an unreadable 2xx answer (`CMLProtocolError`)
    would only come again: neither is retried.
    """
    if isinstance(error, CMLTLSError):
        return False
    return isinstance(error, CMLThrottled | CMLServerError | CMLTransportError)


@dataclass
class RetryState:
    """One request's retry budget."""

    policy: RetryPolicy
    attempt: int = 1
    started: float = field(default_factory=time.monotonic)

    def delay_before_retry(self, error: CMLError) -> float:
        """Seconds to wait before the next try; re-raises `error` when it must not be retried."""
        if not is_retryable(error) or self.attempt >= self.policy.attempts:
            raise error
        backoff = random.uniform(
            0, min(self.policy.wait_max, self.policy.wait_initial * 2**self.attempt)
        )
        retry_after = error.retry_after if isinstance(error, CMLThrottled) else None
        delay = max(backoff, retry_after or 0.0)
        if time.monotonic() - self.started + delay > self.policy.timeout:
            raise error
        self.attempt += 1
        return 0.0 if _testing else delay


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
