"""The per-window Prefect task of a backfill, idempotent per (job, window).

The record of each window is a Prefect result record (`ResultStore`, JSON) under
:func:`cml_tasks.backfill.window_key`, in Prefect's default result storage: the block named by
`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`, else the directory `PREFECT_LOCAL_STORAGE_PATH`
(`~/.prefect/storage`). Reads and writes happen under the store's lock for that key
(SERIALIZABLE isolation, a `FileSystemLockManager` in `<PREFECT_HOME>/locks/cml-backfill`), so
two backfills on one machine never both start a window.

A "starting" record is written *before* the start call: if the process dies mid-call, the next
backfill sees that the outcome is unknown and reports it instead of starting the window again.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
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
from cml_tasks.errors import CMLConfigError, CMLError, CMLOutcomeUnknown
from cml_tasks.job import JobRef
from cml_tasks.settings import CMLSettings
from cml_tasks.tasks import resolve_settings, shared_client

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when a backfill creates it."""
LOCK_HOLD_SECONDS = 600.0
"""A lock left by a vanished holder on another machine frees itself after this long."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's concurrency slots come back after a minute."""


class _WindowLocks(FileSystemLockManager):
    """Prefect's file locks, made safe against SIGKILL and against torn lock files.

    A lock whose holder was a process on this host that no longer exists is free, so a rerun
    after a kill does not wait `LOCK_HOLD_SECONDS`. A lock file still empty (being written by
    another process) counts as held.
    """

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        try:
            info = super()._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # created but not yet written by its holder
            return {"holder": "", "expiration": None, "path": self._lock_path_for_key(key)}
        if info is not None and _holder_is_dead(info["holder"]):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return None
        return info


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


@functools.lru_cache(maxsize=4)
def _record_store(api_url: str, storage_block: str, storage_path: str, home: str) -> ResultStore:
    return ResultStore(
        result_storage=get_default_result_storage(_sync=True),  # type: ignore[call-arg]
        lock_manager=_WindowLocks(Path(home) / "locks" / "cml-backfill"),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )


def read_record(store: ResultStore, key: str, holder: str | None = None) -> WindowRecord | None:
    """The window's record, or None if it was never written."""
    if not store.exists(key):
        return None
    return WindowRecord.model_validate(store.read(key, holder=holder).result)


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


def _outcome(
    job: JobRef, planned: PlannedWindow, result: str, **fields: str | None
) -> WindowOutcome:
    window = planned.window
    return WindowOutcome(
        window=planned.label,
        window_start=window.start,
        window_end=window.end,
        environment=planned.environment,
        result=result,
        job_url=job.page_url,
        **fields,
    )


# Prefect's protocol for name callbacks has a classmethod no plain function has.
@task(name="cml-backfill-window", task_run_name=_run_name, cache_policy=NO_CACHE)  # type: ignore[arg-type]
def backfill_window(
    job: JobRef,
    planned: PlannedWindow,
    reprocess: Reprocess = Reprocess.MISSING,
    credentials: CMLCredentials | CMLSettings | None = None,
    project_limit: str | None = None,
) -> WindowOutcome:
    """Start the job for one window unless its record says not to; record what happened.

    Raises the start's `CMLError` when it failed (recorded `start_failed`, retried by the next
    `missing` backfill) and `CMLOutcomeUnknown` when a run may exist (never retried blindly).
    `project_limit` names a global concurrency limit held while the start is in flight.
    """
    logger = get_run_logger()
    store = record_store()
    key = planned.key
    begun = datetime.now(UTC)
    with _locked(store, key) as holder:
        action, reason = decide(read_record(store, key, holder), reprocess)
    if action is Action.START:
        with _slot(project_limit), _locked(store, key) as holder:
            record = read_record(store, key, holder)
            action, reason = decide(record, reprocess)
            if record is not None and record.updated_at >= begun:
                action, reason = Action.SKIP, f"started meanwhile by another backfill: {reason}"
            if action is Action.START:
                return _start(store, holder, job, planned, credentials, reason)
    if action is Action.UNKNOWN:
        raise CMLOutcomeUnknown(f"{planned.label}: not started, {reason}", job_url=job.page_url)
    logger.info("Skipping %s: %s", planned.label, reason)
    return _outcome(job, planned, "skipped", reason=reason)


def _start(
    store: ResultStore,
    holder: str,
    job: JobRef,
    planned: PlannedWindow,
    credentials: CMLCredentials | CMLSettings | None,
    reason: str,
) -> WindowOutcome:
    """Record the intent, start, record the result: the caller holds the window's lock."""
    logger = get_run_logger()

    def record(status: WindowStatus, **fields: str | None) -> None:
        _write(
            store,
            WindowRecord(
                key=planned.key,
                job_url=job.page_url,
                window_start=planned.window.start,
                window_end=planned.window.end,
                environment=planned.environment,
                status=status,
                **fields,
            ),
            holder,
        )

    record(WindowStatus.STARTING)
    try:
        run = shared_client(resolve_settings(credentials)).start(job, planned.environment)
    except CMLOutcomeUnknown as error:
        record(WindowStatus.OUTCOME_UNKNOWN, error=str(error))
        raise
    except CMLError as error:
        record(WindowStatus.START_FAILED, error=str(error))
        raise
    record(WindowStatus.STARTED, engine_id=run.engine_id)
    logger.info(
        "Started %s for %s (%s): engine %s, job page %s",
        job.slug,
        planned.label,
        reason,
        run.engine_id,
        run.job_url,
    )
    return _outcome(job, planned, WindowStatus.STARTED, engine_id=run.engine_id)


def check_follow_available() -> None:
    """Following runs to completion needs API v2 waiting (`cml_tasks.waiting`)."""
    raise CMLConfigError(
        "follow=True needs follow-to-completion (API v2, cml_tasks.waiting), which this "
        "version does not have yet: run the backfill without follow"
    )
