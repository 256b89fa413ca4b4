"""Window records in Prefect's result storage, claimed with file locks of this machine.

Each (job, window) has one Prefect result record (JSON) under
:func:`cml_tasks.backfill.window_key`, in Prefect's default result storage: the block named by
`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`, else the directory `PREFECT_LOCAL_STORAGE_PATH`
(`~/.prefect/storage`). A claim is the store's lock for that key, a file in
`<PREFECT_HOME>/locks/cml-backfill`: it serialises the processes of ONE machine. Processes on
other machines share records only through shared result storage, and their claims not at all;
the name says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect.results import ResultStore
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings

from cml_tasks._shared import shared
from cml_tasks.backfill import WindowRecord
from cml_tasks.prefect._adapter import (
    DeadHolderAwareLocks,
    decode_result_record,
    default_result_storage,
    lock_holder,
)

LOCK_HOLD_SECONDS = 600.0
"""A lock left by a vanished holder on another machine frees itself after this long."""


class UnreadableRecord(ValueError):
    """A window's record file that holds no record: its writer was killed mid-write."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"window record {path} is unreadable: its writer died mid-write")
        self.written_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)


class _Claim:
    """A held lock on one window's record."""

    def __init__(
        self,
        store: ResultStore,
        key: str,
        holder: str,
        record: WindowRecord | None,
        torn_at: datetime | None,
    ) -> None:
        self._store, self._key, self._holder = store, key, holder
        self.record, self.torn_at = record, torn_at

    def write(self, record: WindowRecord) -> None:
        self._store.write(record.model_dump(mode="json"), key=self._key, holder=self._holder)


class MachineLocalRecords:
    """`WindowRecords` in a Prefect `ResultStore`, claimed through this machine's file locks."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    @contextmanager
    def claim(self, key: str) -> Iterator[_Claim]:
        holder = lock_holder(uuid.uuid4().hex)
        locks = self.store.lock_manager
        assert locks is not None
        locks.acquire_lock(key, holder, acquire_timeout=None, hold_timeout=LOCK_HOLD_SECONDS)
        try:
            yield _Claim(self.store, key, holder, *self._read_claimed(key, holder))
        finally:
            locks.release_lock(key, holder)

    def read(self, key: str, holder: str | None = None) -> WindowRecord | None:
        """The window's record, or None if it was never written.

        Raises `UnreadableRecord` for a record stored but unreadable: Prefect's local storage
        truncates a file before writing it, so a kill in between leaves it empty
        (`ResultStore.exists` then says False, which must not read as "never started").
        """
        if self.store.exists(key):
            return WindowRecord.model_validate(self.store.read(key, holder=holder).result)
        basepath = getattr(self.store.result_storage, "basepath", None)
        path = None if basepath is None else Path(basepath).expanduser() / key
        if path is not None and path.is_file():
            raise UnreadableRecord(path)
        return None

    def _read_claimed(self, key: str, holder: str) -> tuple[WindowRecord | None, datetime | None]:
        try:
            return self.read(key, holder), None
        except UnreadableRecord as error:
            return None, error.written_at

    def peek(self, key: str) -> WindowRecord | None:
        """The record as stored now, without waiting for its lock (a start holds it for the
        whole call). None if absent or being written."""
        read_path = getattr(self.store.result_storage, "read_path", None)
        if read_path is None or not self.store.exists(key):
            return None
        try:
            content = read_path(key)
            if not isinstance(content, bytes):  # an async storage block
                return None
            return WindowRecord.model_validate(decode_result_record(content, self.store.serializer))
        except (OSError, ValueError):
            return None


def window_records() -> MachineLocalRecords:
    """The records of the current Prefect settings (resolved once per configuration: finding
    the default storage may ask the Prefect API)."""
    settings = get_current_settings()
    return _records(
        str(settings.api.url),
        str(settings.results.default_storage_block),
        str(settings.results.local_storage_path),
        str(settings.home),
    )


@shared
def _records(api_url: str, storage_block: str, storage_path: str, home: str) -> MachineLocalRecords:
    store = ResultStore(
        result_storage=default_result_storage(),
        lock_manager=DeadHolderAwareLocks(Path(home) / "locks" / "cml-backfill"),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )
    return MachineLocalRecords(store)
