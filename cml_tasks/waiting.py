"""Follow CML runs to a terminal state: polling, maximum wait, stop on timeout or cancel.

Many runs followed at once share their polls (`RunPoller`): each round asks CML once per
job through the list endpoint (newest first, paging only as far as the oldest followed run)
instead of once per run, and answers every waiter of that job. Every round is a fresh request
(`Cache-Control: no-cache`); no answer is reused for a later round.

A poll that fails transiently (5xx, timeout, dropped connection, throttling, after the
client's own retries) only delays the next answer: it never fails the run nor starts one. An
answer that cannot be read (`CMLProtocolError`) fails the wait: asking again would not help.

The maximum wait is a deadline: no sleep runs past it, no poll retries past it, and at the
deadline the run's latest word decides - the stop call's answer (one try), or one more read
when the run is left running. A run that ended meanwhile is reported as it ended, never as
stopped by us; a stop that failed is reported as such. The whole wait thus lasts at most the
deadline plus a couple of request timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from cml_tasks._retry import NO_RETRY, RetryPolicy, is_retryable
from cml_tasks.client import AsyncCMLClient, CMLClient
from cml_tasks.errors import CMLError, CMLWaitCancelled
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.run_errors import (
    CMLRunError,
    CMLRunFailed,
    CMLRunSkipped,
    CMLRunStopped,
    CMLRunTimedOut,
    CMLWaitTimeout,
)
from cml_tasks.run_status import RunStatus

logger = logging.getLogger("cml_tasks.waiting")

OnChange = Callable[[JobRun], None]
"""Called with the run each time its status changes (and once at the start)."""
ShouldCancel = Callable[[], bool]
"""Polled between rounds; True stops the CML run and raises `CMLWaitCancelled`."""

_TICK = 0.5  # seconds between checks of `should_cancel` while waiting for a round
_LIST_PAGE_SIZE = 100
_CREATED_SKEW = timedelta(seconds=5)  # created_at is the server's clock: allow for jitter


def raise_for_status(run: JobRun) -> JobRun:
    """Return a SUCCEEDED run; raise the typed error of any other terminal state."""
    errors: dict[RunStatus, type[CMLRunError]] = {
        RunStatus.FAILED: CMLRunFailed,
        RunStatus.TIMEDOUT: CMLRunTimedOut,
        RunStatus.STOPPED: CMLRunStopped,
        RunStatus.SKIPPED: CMLRunSkipped,
    }
    error = errors.get(run.status)
    if error is not None:
        raise error("CML run did not succeed", run=run)
    return run


def log_change(run: JobRun) -> None:
    """The default `on_change`: one line per status change, with the run's page URL."""
    logger.info("CML run %s of %s is %s: %s", run.id, run.job.slug, run.status.short, run.page_url)


class RunPoller:
    """Shared polls for the runs followed from many threads (e.g. a backfill's task runs).

    No background thread: whichever waiter finds a round due runs it for everybody.
    """

    def __init__(self, client: CMLClient, *, poll_interval: float = 30.0) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.client = client
        self.poll_interval = poll_interval
        self._cond = threading.Condition()
        self._latest: dict[tuple[JobRef, str], JobRun] = {}
        self._errors: dict[tuple[JobRef, str], CMLError] = {}
        self._watchers: dict[tuple[JobRef, str], int] = {}
        self._polling = False
        self._next_round = 0.0

    def wait(
        self,
        run: JobRun,
        *,
        max_wait: float | None = None,
        stop_on_timeout: bool = True,
        on_change: OnChange | None = log_change,
        should_cancel: ShouldCancel | None = None,
    ) -> JobRun:
        """Block until `run` is terminal and return it (whatever the outcome).

        Past `max_wait` seconds, stop the run (unless `stop_on_timeout=False`) and raise
        `CMLWaitTimeout`. Interrupted (KeyboardInterrupt, a Prefect cancellation signal) or
        cancelled through `should_cancel`, stop the run before giving up on it.
        """
        key = (run.job, run.id)
        deadline = None if max_wait is None else time.monotonic() + max_wait
        with self._cond:
            self._watchers[key] = self._watchers.get(key, 0) + 1
            self._latest.setdefault(key, run)
        seen: RunStatus | None = None
        try:
            while True:
                lead = False
                with self._cond:
                    current = self._latest[key]
                    error = self._errors.pop(key, None)
                if error is not None:
                    raise error
                if current.status is not seen:
                    seen = current.status
                    if on_change is not None:
                        on_change(current)
                if current.is_terminal:
                    return current
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if should_cancel is not None and should_cancel():
                    _stop_quietly(self.client, current, "the Prefect run was cancelled")
                    raise CMLWaitCancelled(
                        f"Stopped CML run {current.id}: the Prefect run was cancelled",
                        job_url=current.job.page_url,
                    )
                with self._cond:
                    now = time.monotonic()
                    if not self._polling and now >= self._next_round:
                        self._polling = lead = True
                    else:
                        limits = [self._next_round - now, _TICK]
                        if deadline is not None:
                            limits.append(deadline - now)
                        self._cond.wait(max(0.0, min(limits)))
                if lead:
                    try:
                        self._round(_within(self.client.retry, deadline))
                    finally:
                        with self._cond:
                            self._polling = False
                            self._next_round = time.monotonic() + self.poll_interval
                            self._cond.notify_all()
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: the run must not outlive us
                _stop_quietly(self.client, self._latest[key], f"interrupted ({type(exc).__name__})")
            raise
        finally:
            with self._cond:
                self._watchers[key] -= 1
                if not self._watchers[key]:
                    del self._watchers[key]
                    self._latest.pop(key, None)
                    self._errors.pop(key, None)
        return _timed_out(self.client, current, max_wait, stop_on_timeout, on_change)

    def _round(self, retry: RetryPolicy | None = None) -> None:
        """One poll of every followed run: one listing per job, GETs only for what it missed."""
        with self._cond:
            by_job: dict[JobRef, list[JobRun]] = {}
            for (job, _), run in self._latest.items():
                if not run.is_terminal:
                    by_job.setdefault(job, []).append(run)
        for job, runs in by_job.items():
            try:
                fresh = self._poll_job(job, runs, retry)
            except CMLError as error:
                if not is_retryable(error):
                    with self._cond:
                        for run in runs:
                            self._errors[(job, run.id)] = error
                    continue
                logger.warning(
                    "Polling CML runs of %s failed; trying again later: %s", job.slug, error
                )
                continue
            with self._cond:
                for run in fresh:
                    if (job, run.id) in self._latest:
                        self._latest[(job, run.id)] = run

    def _poll_job(self, job: JobRef, runs: list[JobRun], retry: RetryPolicy | None) -> list[JobRun]:
        if len(runs) == 1:
            return [self.client.get_run(job, runs[0].id, retry=retry)]
        wanted = {run.id for run in runs}
        oldest = min((r.created_at for r in runs if r.created_at), default=None)
        fresh: list[JobRun] = []
        listing = self.client.list_runs(
            job, page_size=_LIST_PAGE_SIZE, sort="-created_at", retry=retry
        )
        for listed in listing:
            if listed.id in wanted:
                fresh.append(listed)
                wanted.discard(listed.id)
                if not wanted:
                    return fresh
            if oldest and listed.created_at and listed.created_at < oldest - _CREATED_SKEW:
                break
        # Missing from the listing (e.g. a lagging index): ask for each directly.
        return fresh + [self.client.get_run(job, run_id, retry=retry) for run_id in sorted(wanted)]


def wait_for_run(
    client: CMLClient,
    run: JobRun,
    *,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    stop_on_timeout: bool = True,
    on_change: OnChange | None = log_change,
    should_cancel: ShouldCancel | None = None,
) -> JobRun:
    """Follow one run to a terminal state (see `RunPoller.wait`), polling on its own."""
    return RunPoller(client, poll_interval=poll_interval).wait(
        run,
        max_wait=max_wait,
        stop_on_timeout=stop_on_timeout,
        on_change=on_change,
        should_cancel=should_cancel,
    )


async def async_wait_for_run(
    client: AsyncCMLClient,
    run: JobRun,
    *,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
    stop_on_timeout: bool = True,
    on_change: OnChange | None = log_change,
    should_cancel: ShouldCancel | None = None,
) -> JobRun:
    """`wait_for_run` for asyncio: one GET per poll; a task cancellation stops the run."""
    deadline = None if max_wait is None else time.monotonic() + max_wait
    seen: RunStatus | None = None
    try:
        while True:
            if run.status is not seen:
                seen = run.status
                if on_change is not None:
                    on_change(run)
            if run.is_terminal:
                return run
            next_poll = time.monotonic() + poll_interval
            while (now := time.monotonic()) < next_poll:
                if deadline is not None and now >= deadline:
                    break
                if should_cancel is not None and should_cancel():
                    await _astop_quietly(client, run, "the Prefect run was cancelled")
                    raise CMLWaitCancelled(
                        f"Stopped CML run {run.id}: the Prefect run was cancelled",
                        job_url=run.job.page_url,
                    )
                limits = [_TICK, next_poll - now]
                if deadline is not None:
                    limits.append(deadline - now)
                await asyncio.sleep(min(limits))
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                run = await client.get_run(run.job, run.id, retry=_within(client.retry, deadline))
            except CMLError as error:
                if not is_retryable(error):
                    raise
                logger.warning("Polling CML run %s failed; trying again later: %s", run.id, error)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            await asyncio.shield(_astop_quietly(client, run, f"interrupted ({type(exc).__name__})"))
        raise
    if stop_on_timeout:
        why = f"no end within the maximum wait of {max_wait:g} s"
        answer = await _astop_quietly(client, run, why, retry=NO_RETRY)
    else:
        answer = await _aread_quietly(client, run)
    return _outcome(run, answer, max_wait, stop_on_timeout, on_change)


def _within(policy: RetryPolicy, deadline: float | None) -> RetryPolicy | None:
    """`policy` with no retry starting past `deadline` (None: no deadline, the client's own)."""
    if deadline is None:
        return None
    return replace(policy, timeout=min(policy.timeout, max(0.0, deadline - time.monotonic())))


def _timed_out(
    client: CMLClient,
    run: JobRun,
    max_wait: float | None,
    stop_on_timeout: bool,
    on_change: OnChange | None,
) -> JobRun:
    """At the maximum wait: stop the run (one try) or read it once more, then decide."""
    if stop_on_timeout:
        why = f"no end within the maximum wait of {max_wait:g} s"
        answer = _stop_quietly(client, run, why, retry=NO_RETRY)
    else:
        answer = _read_quietly(client, run)
    return _outcome(run, answer, max_wait, stop_on_timeout, on_change)


def _outcome(
    run: JobRun,
    answer: JobRun | CMLError,
    max_wait: float | None,
    stop_on_timeout: bool,
    on_change: OnChange | None,
) -> JobRun:
    """A run that ended on its own by the deadline is returned as it ended (the stop call
    leaves a finished run as it is and says so); otherwise `CMLWaitTimeout`, saying truly
    whether we stopped it."""
    if isinstance(answer, JobRun):
        if on_change is not None and answer.status is not run.status:
            on_change(answer)
        ended_by_us = stop_on_timeout and answer.status is RunStatus.STOPPED
        if answer.is_terminal and not ended_by_us:
            return answer
        run = answer
    if not stop_on_timeout:
        action, stopped = "left it running", False
    elif isinstance(answer, CMLError):
        action, stopped = f"could not stop it, it may still be running ({answer})", False
    else:
        action, stopped = "stopped it", True
    raise CMLWaitTimeout(
        f"CML run {run.id} of {run.job.slug} was still {run.status.short} after the maximum "
        f"wait of {max_wait:g} s; {action} (run page: {run.page_url})",
        run=run,
        stopped=stopped,
    )


def _stop_quietly(
    client: CMLClient, run: JobRun, why: str, *, retry: RetryPolicy | None = None
) -> JobRun | CMLError:
    """Stop a run we give up on: its answer, or the error (logged, never hiding the reason)."""
    logger.warning("Stopping CML run %s of %s: %s (%s)", run.id, run.job.slug, why, run.page_url)
    try:
        return client.stop_run(run.job, run.id, retry=retry)
    except CMLError as error:
        logger.error("Could not stop CML run %s: %s", run.id, error)
        return error


def _read_quietly(client: CMLClient, run: JobRun) -> JobRun | CMLError:
    """One last read of a run left running (one try): it may have ended since the last poll."""
    try:
        return client.get_run(run.job, run.id, retry=NO_RETRY)
    except CMLError as error:
        return error


async def _astop_quietly(
    client: AsyncCMLClient, run: JobRun, why: str, *, retry: RetryPolicy | None = None
) -> JobRun | CMLError:
    logger.warning("Stopping CML run %s of %s: %s (%s)", run.id, run.job.slug, why, run.page_url)
    try:
        return await client.stop_run(run.job, run.id, retry=retry)
    except CMLError as error:
        logger.error("Could not stop CML run %s: %s", run.id, error)
        return error


async def _aread_quietly(client: AsyncCMLClient, run: JobRun) -> JobRun | CMLError:
    try:
        return await client.get_run(run.job, run.id, retry=NO_RETRY)
    except CMLError as error:
        return error
