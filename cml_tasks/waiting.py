"""Follow CML runs to a terminal state: polling, maximum wait, stop on timeout or cancel.

Many runs followed at once share their polls (`RunPoller`): each round asks CML once per
job through the list endpoint (newest first, paging only as far as the oldest followed run)
instead of once per run, and answers every waiter of that job. Every round is a fresh request
(`Cache-Control: no-cache`); no answer is reused for a later round.

A poll that fails transiently (5xx, timeout, dropped connection, throttling, after the
client's own retries) only delays the next answer: it never fails the run nor starts one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from cml_tasks._retry import is_retryable
from cml_tasks.client import AsyncCMLClient, CMLClient
from cml_tasks.errors import (
    CMLError,
    CMLRunError,
    CMLRunFailed,
    CMLRunSkipped,
    CMLRunStopped,
    CMLRunTimedOut,
    CMLWaitCancelled,
    CMLWaitTimeout,
)
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun, RunStatus

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
                        self._round()
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
        return _timed_out(self.client, current, max_wait, stop_on_timeout)

    def _round(self) -> None:
        """One poll of every followed run: one listing per job, GETs only for what it missed."""
        with self._cond:
            by_job: dict[JobRef, list[JobRun]] = {}
            for (job, _), run in self._latest.items():
                if not run.is_terminal:
                    by_job.setdefault(job, []).append(run)
        for job, runs in by_job.items():
            try:
                fresh = self._poll_job(job, runs)
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

    def _poll_job(self, job: JobRef, runs: list[JobRun]) -> list[JobRun]:
        if len(runs) == 1:
            return [self.client.get_run(job, runs[0].id)]
        wanted = {run.id for run in runs}
        oldest = min((r.created_at for r in runs if r.created_at), default=None)
        fresh: list[JobRun] = []
        for listed in self.client.list_runs(job, page_size=_LIST_PAGE_SIZE, sort="-created_at"):
            if listed.id in wanted:
                fresh.append(listed)
                wanted.discard(listed.id)
                if not wanted:
                    return fresh
            if oldest and listed.created_at and listed.created_at < oldest - _CREATED_SKEW:
                break
        # Missing from the listing (e.g. a lagging index): ask for each directly.
        return fresh + [self.client.get_run(job, run_id) for run_id in sorted(wanted)]


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
                await asyncio.sleep(min(_TICK, next_poll - now))
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                run = await client.get_run(run.job, run.id)
            except CMLError as error:
                if not is_retryable(error):
                    raise
                logger.warning("Polling CML run %s failed; trying again later: %s", run.id, error)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            await asyncio.shield(_astop_quietly(client, run, f"interrupted ({type(exc).__name__})"))
        raise
    if stop_on_timeout:
        await _astop_quietly(client, run, f"no end within the maximum wait of {max_wait:g} s")
    raise _timeout_error(run, max_wait, stop_on_timeout)


def _timed_out(
    client: CMLClient, run: JobRun, max_wait: float | None, stop_on_timeout: bool
) -> JobRun:
    if stop_on_timeout:
        _stop_quietly(client, run, f"no end within the maximum wait of {max_wait:g} s")
    raise _timeout_error(run, max_wait, stop_on_timeout)


def _timeout_error(run: JobRun, max_wait: float | None, stopped: bool) -> CMLWaitTimeout:
    action = "stopped it" if stopped else "left it running"
    return CMLWaitTimeout(
        f"CML run {run.id} of {run.job.slug} was still {run.status.short} after the maximum "
        f"wait of {max_wait:g} s; {action} (run page: {run.page_url})",
        run=run,
        stopped=stopped,
    )


def _stop_quietly(client: CMLClient, run: JobRun, why: str) -> None:
    """Stop a run we give up on; a failure to stop is logged, never hides the reason."""
    logger.warning("Stopping CML run %s of %s: %s (%s)", run.id, run.job.slug, why, run.page_url)
    try:
        client.stop_run(run.job, run.id)
    except CMLError as error:
        logger.error("Could not stop CML run %s: %s", run.id, error)


async def _astop_quietly(client: AsyncCMLClient, run: JobRun, why: str) -> None:
    logger.warning("Stopping CML run %s of %s: %s (%s)", run.id, run.job.slug, why, run.page_url)
    try:
        await client.stop_run(run.job, run.id)
    except CMLError as error:
        logger.error("Could not stop CML run %s: %s", run.id, error)
