"""Start a run safely: after an "outcome unknown" start, ask CML instead of guessing.

CML has no idempotency key. When a start's answer is lost (timeout after sending, 500/502/504,
dropped connection), list the job's runs created since just before the attempt: a run with
exactly this environment is ours, adopt it; none means CML never created it, so starting
again cannot run the job twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeAlias, TypeVar

from cml_tasks._text import printable
from cml_tasks.client import AsyncCMLClient, CMLClient
from cml_tasks.environment import validate_environment
from cml_tasks.errors import CMLError, CMLOutcomeUnknown, CMLProtocolError
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun

logger = logging.getLogger("cml_tasks.reconcile")
Log: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]
"""Where adoptions and safe restarts are told: this module's logger, or a Prefect run logger."""
T = TypeVar("T")

SETTLE_SECONDS = 2.0
"""After an unknown outcome, wait this long before asking CML, so a late run is listed."""

CLOCK_SKEW = timedelta(minutes=2)
"""How far CML's clock (`created_at`) may be behind ours (`requested_at`)."""


def _created_at(run: JobRun) -> datetime | None:
    """The run's `created_at`, which must carry a time zone.

    `JobRun` refuses a naive timestamp when it reads one; a run built without validation
    (`model_construct`) could still hold one, and comparing it with an attempt's time
    raised `TypeError`. It is CML's trouble (`CMLProtocolError`), never a reason to adopt.
    """
    created = run.created_at
    if created is not None and created.utcoffset() is None:
        raise CMLProtocolError(
            f"Reading runs of {run.job.slug}: run {printable(run.id)} has a created_at "
            "without a time zone; it cannot be matched to a start",
            job_url=run.job.page_url,
        )
    return created


def is_ours(run: JobRun, environment: Mapping[str, str], since: datetime) -> bool:
    """Created no earlier than `since` (minus the skew) with exactly this environment."""
    created = _created_at(run)
    return created is not None and created >= since - CLOCK_SKEW and run.environment == environment


def find_started_run(
    client: CMLClient, job: str | JobRef, environment: Mapping[str, str], since: datetime
) -> JobRun | None:
    """The run created for `job` since `since` with exactly `environment`, if any."""
    return next(
        (run for run in _runs_since(client, job, since) if is_ours(run, environment, since)), None
    )


def _runs_since(client: CMLClient, job: str | JobRef, since: datetime) -> Iterator[JobRun]:
    """The job's runs, newest first, until the first created before `since` (less the clock
    skew): the listing's pages stop there."""
    for run in client.list_runs(job, sort="-created_at", page_size=100):
        created = _created_at(run)
        if created is not None and created < since - CLOCK_SKEW:
            return  # newest first: everything further is older
        yield run


async def async_find_started_run(
    client: AsyncCMLClient, job: str | JobRef, environment: Mapping[str, str], since: datetime
) -> JobRun | None:
    """`find_started_run` for asyncio."""
    async for run in client.list_runs(job, sort="-created_at", page_size=100):
        created = _created_at(run)
        if created is not None and created < since - CLOCK_SKEW:
            return None
        if is_ours(run, environment, since):
            return run
    return None


def runs_since(
    client: CMLClient, job: str | JobRef, since: datetime
) -> dict[frozenset[tuple[str, str]], list[str]]:
    """The ids of the job's runs created since `since` (less the clock skew), by environment:
    one paged listing, newest first, that stops at the first older run."""
    found: dict[frozenset[tuple[str, str]], list[str]] = {}
    for run in _runs_since(client, job, since):
        found.setdefault(frozenset(run.environment.items()), []).append(run.id)
    return found


class RunIndex:
    """A job's runs by environment, listed once (one paged listing, newest first) when first
    asked: CML's own answer for windows that have no record."""

    def __init__(self, client: CMLClient, job: str | JobRef) -> None:
        self._client, self._job = client, job
        self._lock = threading.Lock()
        self._runs: dict[frozenset[tuple[str, str]], JobRun] | None = None

    def find(self, environment: Mapping[str, str]) -> JobRun | None:
        """The newest run with exactly `environment`, if CML has one."""
        with self._lock:
            if self._runs is None:
                runs: dict[frozenset[tuple[str, str]], JobRun] = {}
                for run in self._client.list_runs(self._job, sort="-created_at", page_size=100):
                    runs.setdefault(frozenset(run.environment.items()), run)
                self._runs = runs
        return self._runs.get(frozenset(environment.items()))


def start_run(
    client: CMLClient,
    job: str | JobRef,
    environment: Mapping[str, object] | None = None,
    arguments: str | None = None,
    *,
    attempts: int = 3,
    settle: float = SETTLE_SECONDS,
    log: Log = logger,
) -> JobRun:
    """Create a run (API v2); on an unknown outcome, adopt the run it made or start again.

    `settle` seconds pass before asking, so a run created at the last moment is listed.
    At most `attempts` starts; the last unknown outcome is raised if all were lost.
    """
    env = validate_environment(environment)
    return _start_safely(
        lambda: client.create_run(job, env, arguments),
        lambda run: run,
        client,
        job,
        env,
        attempts=attempts,
        settle=settle,
        log=log,
    )


def start_v1_run(
    client: CMLClient,
    job: str | JobRef,
    environment: Mapping[str, object] | None = None,
    *,
    reconcile: bool,
    attempts: int = 3,
    settle: float = SETTLE_SECONDS,
    log: Log = logger,
) -> str:
    """The v1 start call; returns the engine id (= the API v2 run id).

    With `reconcile` (the v2 key is set) an unknown outcome is resolved as `start_run` does;
    without it, it is raised: only CML can tell whether the run exists.
    """
    env = validate_environment(environment)
    if not reconcile:
        return client.start(job, env).engine_id
    return _start_safely(
        lambda: client.start(job, env).engine_id,
        lambda run: run.id,
        client,
        job,
        env,
        attempts=attempts,
        settle=settle,
        log=log,
    )


def _start_safely(
    create: Callable[[], T],
    adopt: Callable[[JobRun], T],
    client: CMLClient,
    job: str | JobRef,
    env: dict[str, str],
    *,
    attempts: int,
    settle: float,
    log: Log,
) -> T:
    """The one adopt-or-start-again loop of every synchronous start."""
    attempt = 0
    while True:
        attempt += 1
        requested_at = datetime.now(UTC)
        try:
            return create()
        except CMLOutcomeUnknown as unknown:
            time.sleep(settle)
            try:
                found = find_started_run(client, job, env, requested_at)
            except CMLError as error:  # CML cannot be asked either: still unknown
                raise unknown from error
            if found is not None:
                return adopt(_adopted(found, log))
            _retrying(unknown, attempt, attempts, log)


async def async_start_run(
    client: AsyncCMLClient,
    job: str | JobRef,
    environment: Mapping[str, object] | None = None,
    arguments: str | None = None,
    *,
    attempts: int = 3,
    settle: float = SETTLE_SECONDS,
    log: Log = logger,
) -> JobRun:
    """`start_run` for asyncio."""
    env = validate_environment(environment)
    attempt = 0
    while True:
        attempt += 1
        requested_at = datetime.now(UTC)
        try:
            return await client.create_run(job, env, arguments)
        except CMLOutcomeUnknown as unknown:
            await asyncio.sleep(settle)
            try:
                found = await async_find_started_run(client, job, env, requested_at)
            except CMLError as error:
                raise unknown from error
            if found is not None:
                return _adopted(found, log)
            _retrying(unknown, attempt, attempts, log)


def _adopted(run: JobRun, log: Log) -> JobRun:
    log.warning(
        "The start's answer was lost, but CML created run %s of %s: adopting it (%s)",
        run.id,
        run.job.slug,
        run.page_url,
    )
    return run


def _retrying(unknown: CMLOutcomeUnknown, attempt: int, attempts: int, log: Log) -> None:
    if attempt >= attempts:
        raise unknown
    log.warning("CML did not create the run (%s); starting again, safely", unknown)
