"""The per-window Prefect task of a backfill, idempotent per (job, window).

The record of each window is a Prefect result record (`ResultStore`, JSON) under
:func:`cml_tasks.backfill.window_key`, in Prefect's default result storage: the block named by
`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`, else the directory `PREFECT_LOCAL_STORAGE_PATH`
(`~/.prefect/storage`). Reads and writes happen under the store's lock for that key
(SERIALIZABLE isolation, a `FileSystemLockManager` in `<PREFECT_HOME>/locks/cml-backfill`), so
two backfills on one machine never both start a window.

A "starting" record is written *before* the start call: if the process dies mid-call, the next
backfill sees that the outcome is unknown. With an API v2 key it asks CML (a run of the job with
exactly this environment created since the attempt): it adopts that run, or starts the window
if there is none. Without one it reports the window and never starts it again blindly.

With `follow=True` a window starts through API v2 (`reconcile.start_run`), then holds its slot
of the project's global concurrency limit until the CML run ends (one `RunPoller` per process
shares the polls of every followed run), and records `succeeded` or `run_failed`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.locking.filesystem import FileSystemLockManager
from prefect.results import ResultStore, get_default_result_storage
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings

from cml_tasks._shared import shared
from cml_tasks.backfill import (
    Action,
    PlannedWindow,
    Reprocess,
    WindowOutcome,
    WindowRecord,
    WindowStatus,
    decide,
    project_limit_name,
)
from cml_tasks.blocks import CMLCredentials
from cml_tasks.client import CMLClient
from cml_tasks.errors import (
    CMLError,
    CMLOutcomeUnknown,
    CMLRunError,
    CMLWaitCancelled,
    CMLWaitTimeout,
)
from cml_tasks.events import emit_run_event
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun, RunStatus
from cml_tasks.reconcile import find_started_run, start_run
from cml_tasks.settings import CMLSettings
from cml_tasks.tasks import flow_run_cancelling, resolve_settings, shared_client, shared_poller
from cml_tasks.waiting import raise_for_status

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when a backfill creates it."""
LOCK_HOLD_SECONDS = 600.0
"""A lock left by a vanished holder on another machine frees itself after this long."""
TORN_LOCK_SECONDS = 10.0
"""A lock file left empty this long was created by a holder that died before writing it."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's concurrency slots come back after a minute.
Prefect renews the lease in the background while a slot is held (e.g. while following)."""
SETTLE_SECONDS = 2.0
"""After an unknown start, wait this long (since the attempt) before asking CML about it."""
UNDATED_UNKNOWN_MARGIN = timedelta(minutes=10)
"""An `outcome_unknown` record without `attempted_at` (older versions) was written after the
call: look this far before it for the run."""
EVER = datetime(1970, 1, 1, tzinfo=UTC)
"""The attempt time of a window whose record was lost: CML is asked for its runs of all time."""


class _WindowLocks(FileSystemLockManager):
    """Prefect's file locks, made safe against SIGKILL and against torn lock files.

    A lock whose holder was a process on this host that no longer exists is free, so a rerun
    after a kill does not wait `LOCK_HOLD_SECONDS`. Prefect creates a lock file, then writes
    its holder: a file still empty is being written by another process and counts as held,
    unless it has stayed empty for `TORN_LOCK_SECONDS` (its holder died in between).
    """

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        path = Path(self._lock_path_for_key(key))
        try:
            info = super()._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # created but not (yet) written by its holder
            if _age_seconds(path) < TORN_LOCK_SECONDS:
                return {"holder": "", "expiration": None, "path": str(path)}
        else:
            if info is None or not _holder_is_dead(info["holder"]):
                return info
        path.unlink(missing_ok=True)
        self._locks.pop(key, None)
        return None


def _age_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _holder_is_dead(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def record_store() -> ResultStore:
    """Where window records live: Prefect's default result storage, JSON, with file locks.

    Resolved once per configuration: finding the default storage may ask the Prefect API.
    """
    settings = get_current_settings()
    return _record_store(
        str(settings.api.url),
        str(settings.results.default_storage_block),
        str(settings.results.local_storage_path),
        str(settings.home),
    )


@shared
def _record_store(api_url: str, storage_block: str, storage_path: str, home: str) -> ResultStore:
    return ResultStore(
        result_storage=get_default_result_storage(_sync=True),  # type: ignore[call-arg]
        lock_manager=_WindowLocks(Path(home) / "locks" / "cml-backfill"),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )


class UnreadableRecord(ValueError):
    """A window's record file that holds no record: its writer was killed mid-write."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"window record {path} is unreadable: its writer died mid-write")
        self.written_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)


def read_record(store: ResultStore, key: str, holder: str | None = None) -> WindowRecord | None:
    """The window's record, or None if it was never written.

    Raises `UnreadableRecord` for a record stored but unreadable: Prefect's local storage
    truncates a file before writing it, so a kill in between leaves it empty
    (`ResultStore.exists` then says False, which must not read as "never started").
    """
    if store.exists(key):
        return WindowRecord.model_validate(store.read(key, holder=holder).result)
    basepath = getattr(store.result_storage, "basepath", None)
    path = None if basepath is None else Path(basepath).expanduser() / key
    if path is not None and path.is_file():
        raise UnreadableRecord(path)
    return None


def peek_record(store: ResultStore, key: str) -> WindowRecord | None:
    """The window's record as stored now, without waiting for its lock (a backfill holds it
    for the whole start call): for observers. None if absent or being written."""
    from prefect._internal.result_records import ResultRecord

    read_path = getattr(store.result_storage, "read_path", None)
    if read_path is None or not store.exists(key):
        return None
    try:
        content = read_path(key)
        if not isinstance(content, bytes):  # an async storage block
            return None
        data: object = ResultRecord.deserialize(content, backup_serializer=store.serializer).result
        return WindowRecord.model_validate(data)
    except (OSError, ValueError):
        return None


def _write(store: ResultStore, record: WindowRecord, holder: str) -> None:
    store.write(record.model_dump(mode="json"), key=record.key, holder=holder)


@contextmanager
def _locked(store: ResultStore, key: str) -> Iterator[str]:
    """Hold the store's lock for `key` (waiting for another holder); yields the holder id."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    locks = store.lock_manager
    assert locks is not None
    locks.acquire_lock(key, holder, acquire_timeout=None, hold_timeout=LOCK_HOLD_SECONDS)
    try:
        yield holder
    finally:
        locks.release_lock(key, holder)


def ensure_project_limit(job: JobRef, size: int = DEFAULT_PROJECT_LIMIT) -> str:
    """Create the project's global concurrency limit if missing (an existing one is kept).

    Returns its name, e.g. `cml-project:alice:risk-analysis`; change its size in the UI or
    with `prefect global-concurrency-limit update <name> --limit N`.
    """
    name = project_limit_name(job)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another backfill created it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=size)
                )
    return name


def _slot(limit_name: str | None) -> Any:
    if limit_name is None:
        return nullcontext()
    return concurrency(limit_name, occupy=1, lease_duration=SLOT_LEASE_SECONDS, strict=True)


def _run_name(parameters: dict[str, Any]) -> str:
    planned = parameters.get("planned")
    job = parameters.get("job")
    label = planned.label if isinstance(planned, PlannedWindow) else "?"
    slug = job.slug if isinstance(job, JobRef) else str(job)
    return f"{slug} {label}"


def can_reconcile(settings: CMLSettings) -> bool:
    """Whether "outcome unknown" starts can be resolved by asking CML (needs the v2 key)."""
    return settings.api_v2_key is not None


class _Window:
    """One window's record operations, for a caller that holds the window's lock."""

    def __init__(self, store: ResultStore, job: JobRef, planned: PlannedWindow) -> None:
        self.store, self.job, self.planned = store, job, planned

    def read(self, holder: str) -> WindowRecord | None:
        """The window's record. One left unreadable (its writer killed mid-write) may hide a
        started run: it counts as an unknown outcome, resolved by asking CML for a run with
        this environment created at any time, never by starting blindly."""
        try:
            return read_record(self.store, self.planned.key, holder)
        except UnreadableRecord as error:
            return self._record(
                WindowStatus.OUTCOME_UNKNOWN,
                error=str(error),
                attempted_at=EVER,
                updated_at=error.written_at,
            )

    def write(self, holder: str, status: WindowStatus, **fields: Any) -> WindowRecord:
        record = self._record(status, **fields)
        _write(self.store, record, holder)
        return record

    def _record(self, status: WindowStatus, **fields: Any) -> WindowRecord:
        return WindowRecord(
            key=self.planned.key,
            job_url=self.job.page_url,
            window_start=self.planned.window.start,
            window_end=self.planned.window.end,
            environment=self.planned.environment,
            status=status,
            **fields,
        )

    def write_locked(self, status: WindowStatus, **fields: Any) -> WindowRecord:
        with _locked(self.store, self.planned.key) as holder:
            return self.write(holder, status, **fields)


# Prefect's protocol for name callbacks has a classmethod no plain function has.
@task(name="cml-backfill-window", task_run_name=_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def backfill_window(
    job: JobRef,
    planned: PlannedWindow,
    reprocess: Reprocess = Reprocess.MISSING,
    credentials: CMLCredentials | CMLSettings | None = None,
    project_limit: str | None = None,
    follow: bool = False,
    poll_interval: float = 30.0,
    max_wait: float | None = None,
) -> WindowOutcome:
    """Start the job for one window unless its record says not to; record what happened.

    Raises the start's `CMLError` when it failed (recorded `start_failed`, retried by the next
    `missing` backfill) and `CMLOutcomeUnknown` when a run may exist and CML cannot be asked
    (no API v2 key, or v2 unreachable): never retried blindly. A `starting`/`outcome_unknown`
    record is resolved through API v2 when the v2 key is set: the run found is adopted, or
    the window started if there is none.

    `project_limit` names a global concurrency limit held while the start is in flight and,
    with `follow=True`, until the CML run ends. Followed windows end `succeeded` (returned) or
    `run_failed` (recorded, and the run's `CMLRunError`/`CMLWaitTimeout` raised).
    """
    logger = get_run_logger()
    settings = resolve_settings(credentials)
    store = record_store()
    key = planned.key
    begun = datetime.now(UTC)
    window = _Window(store, job, planned)
    with _locked(store, key) as holder:
        record = window.read(holder)
        action, reason = decide(record, reprocess)
    if action is Action.UNKNOWN and not can_reconcile(settings):
        raise CMLOutcomeUnknown(
            f"{planned.label}: not started, {reason} (or set CML_API_V2_KEY: the backfill then "
            "asks CML itself)",
            job_url=job.page_url,
        )
    resume = follow and action is Action.SKIP and _followable(record)
    if action is Action.SKIP and not resume:
        logger.info("Skipping %s: %s", planned.label, reason)
        return WindowOutcome.of(job, planned, "skipped", reason=reason)

    with _slot(project_limit):
        run: JobRun | None = None
        with _locked(store, key) as holder:
            record = window.read(holder)
            action, reason = decide(record, reprocess)
            if resume:
                if record is None or not _followable(record):
                    action, reason = Action.SKIP, f"already {record.status if record else '?'}"
            elif record is not None and record.updated_at >= begun:
                action, reason = Action.SKIP, f"started meanwhile by another backfill: {reason}"
            if action is Action.SKIP and not resume:
                logger.info("Skipping %s: %s", planned.label, reason)
                return WindowOutcome.of(job, planned, "skipped", reason=reason)
            client = shared_client(settings)
            if resume:
                assert record is not None and record.engine_id is not None
                run = client.get_run(job, record.engine_id)
                logger.info("Following %s's run %s again: %s", planned.label, run.id, reason)
            else:
                if action is Action.UNKNOWN:
                    assert record is not None
                    found = _reconcile(client, job, planned, record)
                    if found is not None:
                        logger.warning(
                            "%s: %s; CML has run %s with exactly this environment: adopting it",
                            planned.label,
                            reason,
                            found.id,
                        )
                        window.write(
                            holder,
                            WindowStatus.STARTED,
                            engine_id=found.id,
                            attempted_at=record.attempted_at,
                            run_url=found.page_url,
                        )
                        if not follow:
                            return WindowOutcome.of(
                                job,
                                planned,
                                WindowStatus.STARTED,
                                engine_id=found.id,
                                run_url=found.page_url,
                                reason=f"adopted run {found.id}: {reason}",
                            )
                        run = found
                    else:
                        reason = f"CML has no run of it: starting it safely ({reason})"
                if run is None:
                    started = _start(window, holder, client, settings, follow, reason)
                    if not isinstance(started, JobRun):
                        return started
                    run = started
        assert run is not None
        return _follow(window, run, settings, poll_interval, max_wait)


def _followable(record: WindowRecord | None) -> bool:
    """A window recorded `started` with a run id: a rerun with follow follows it to the end."""
    return (
        record is not None
        and record.status is WindowStatus.STARTED
        and record.engine_id is not None
    )


def _reconcile(
    client: CMLClient, job: JobRef, planned: PlannedWindow, record: WindowRecord
) -> JobRun | None:
    """The run a `starting`/`outcome_unknown` attempt created, if CML has one (API v2)."""
    since = record.attempted_at
    if since is None:
        since = record.updated_at
        if record.status is WindowStatus.OUTCOME_UNKNOWN:
            since -= UNDATED_UNKNOWN_MARGIN
    # A start in flight when its process died may still be landing: give it a moment.
    pause = SETTLE_SECONDS - (datetime.now(UTC) - since).total_seconds()
    if pause > 0:
        time.sleep(pause)
    try:
        return find_started_run(client, job, planned.environment, since)
    except CMLError as error:
        raise CMLOutcomeUnknown(
            f"{planned.label}: a previous start's outcome is unknown and CML could not be "
            f"asked about it: {error}",
            job_url=job.page_url,
        ) from error


def _start(
    window: _Window,
    holder: str,
    client: CMLClient,
    settings: CMLSettings,
    follow: bool,
    reason: str,
) -> WindowOutcome | JobRun:
    """Record the intent, start, record the result: the caller holds the window's lock.

    Followed: through API v2 with reconciliation, returning the `JobRun` to follow. Else the
    v1 call; its unknown outcome is reconciled through v2 when the v2 key is set.
    """
    logger = get_run_logger()
    job, planned = window.job, window.planned
    attempted_at = datetime.now(UTC)
    window.write(holder, WindowStatus.STARTING, attempted_at=attempted_at)
    try:
        if follow:
            run: JobRun | None = start_run(client, job, planned.environment)
            run_id = run.id if run else ""
        else:
            run, run_id = None, _start_v1(client, settings, job, planned, attempted_at)
    except CMLOutcomeUnknown as error:
        window.write(
            holder, WindowStatus.OUTCOME_UNKNOWN, error=str(error), attempted_at=attempted_at
        )
        raise
    except CMLError as error:
        window.write(holder, WindowStatus.START_FAILED, error=str(error), attempted_at=attempted_at)
        raise
    run_url = f"{job.page_url}/runs/{run_id}"
    window.write(
        holder, WindowStatus.STARTED, engine_id=run_id, attempted_at=attempted_at, run_url=run_url
    )
    logger.info(
        "Started %s for %s (%s): run %s, %s", job.slug, planned.label, reason, run_id, run_url
    )
    if run is not None:
        emit_run_event(run)
        return run
    return WindowOutcome.of(
        job, planned, WindowStatus.STARTED, engine_id=run_id, run_url=run_url, reason=reason
    )


def _start_v1(
    client: CMLClient,
    settings: CMLSettings,
    job: JobRef,
    planned: PlannedWindow,
    attempted_at: datetime,
    attempts: int = 3,
) -> str:
    """The v1 start call; an unknown outcome is resolved through v2 when the key is set:
    the run it created is adopted, or, if CML has none, starting again is safe."""
    requested_at = attempted_at
    for attempt in range(1, attempts + 1):
        try:
            return client.start(job, planned.environment).engine_id
        except CMLOutcomeUnknown as unknown:
            if not can_reconcile(settings):
                raise
            time.sleep(SETTLE_SECONDS)
            try:
                found = find_started_run(client, job, planned.environment, requested_at)
            except CMLError as error:
                raise unknown from error
            if found is not None:
                get_run_logger().warning(
                    "%s: the start's answer was lost, but CML created run %s: adopting it",
                    planned.label,
                    found.id,
                )
                return found.id
            if attempt == attempts:
                raise
            get_run_logger().warning(
                "%s: CML did not create the run (%s); starting again, safely",
                planned.label,
                unknown,
            )
            requested_at = datetime.now(UTC)
    raise AssertionError("unreachable")  # pragma: no cover


def _log_change(run: JobRun) -> None:
    get_run_logger().info("CML run %s is %s: %s", run.id, run.status.short, run.page_url)


def _follow(
    window: _Window,
    run: JobRun,
    settings: CMLSettings,
    poll_interval: float,
    max_wait: float | None,
) -> WindowOutcome:
    """Wait (holding the caller's slot) for the run to end; record and return/raise its end.

    A transient poll failure never fails the window; cancelling the flow run, an interrupt
    or `max_wait` stop the CML run. Only a definite end is recorded: a poll error that is not
    transient leaves the record `started` (a rerun with follow picks the run up again).
    """
    job, planned = window.job, window.planned
    fields: dict[str, Any] = {"engine_id": run.id, "run_url": run.page_url}
    try:
        done = shared_poller(settings, poll_interval).wait(
            run, max_wait=max_wait, on_change=_log_change, should_cancel=flow_run_cancelling
        )
    except CMLWaitTimeout as error:
        window.write_locked(
            WindowStatus.RUN_FAILED, error=str(error), run_status=error.run.status.short, **fields
        )
        raise
    except CMLWaitCancelled as error:
        window.write_locked(
            WindowStatus.RUN_FAILED, error=str(error), run_status="stopped", **fields
        )
        raise
    emit_run_event(done)
    status = done.status.short
    if done.status is RunStatus.SUCCEEDED:
        window.write_locked(WindowStatus.SUCCEEDED, run_status=status, **fields)
        return WindowOutcome.of(job, planned, WindowStatus.SUCCEEDED, run_status=status, **fields)
    try:
        raise_for_status(done)
    except CMLRunError as error:
        window.write_locked(WindowStatus.RUN_FAILED, error=str(error), run_status=status, **fields)
        raise
    raise AssertionError(f"not a terminal status: {done.status}")  # pragma: no cover
