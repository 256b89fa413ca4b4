"""Each Prefect internal that `cml_tasks/prefect/_adapter.py` uses, pinned: these fail when a
Prefect upgrade moves or changes one, before a backfill in production does."""

from __future__ import annotations

import inspect
import os
import socket
from pathlib import Path

import pytest

from cml_tasks.backfill import WindowRecord, WindowStatus
from cml_tasks.prefect import _adapter


def test_cancel_intent_is_read_from_the_control_listener() -> None:
    from prefect._internal import control_listener

    assert _adapter.cancel_requested() is False
    control_listener._set_intent("cancel")
    try:
        assert _adapter.cancel_requested() is True
    finally:
        control_listener._clear_intent()
    assert _adapter.cancel_requested() is False


@pytest.mark.usefixtures("prefect_api")
def test_default_result_storage_resolves_synchronously() -> None:
    from prefect.filesystems import WritableFileSystem

    assert isinstance(_adapter.default_result_storage(), WritableFileSystem)


def test_a_stored_result_record_decodes_to_its_value(tmp_path: Path) -> None:
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.serializers import JSONSerializer

    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(tmp_path)),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )
    record = WindowRecord(
        key="cml-backfill-k",
        job_url="https://h/alice/p/jobs/1",
        window_start="2017-01-01",
        window_end="2017-02-01",
        environment={"START_DATE": "2017-01-01"},
        status=WindowStatus.STARTED,
        engine_id="abc",
    )
    store.write(record.model_dump(mode="json"), key=record.key)
    content = (tmp_path / record.key).read_bytes()
    decoded = _adapter.decode_result_record(content, store.serializer)
    assert WindowRecord.model_validate(decoded) == record


def test_lock_manager_internals_we_override_still_exist(tmp_path: Path) -> None:
    from prefect.locking.filesystem import FileSystemLockManager

    hook = inspect.signature(FileSystemLockManager._get_lock_info)
    assert list(hook.parameters) == ["self", "key", "use_cache"]
    locks = _adapter.DeadHolderAwareLocks(tmp_path)
    assert isinstance(locks._locks, dict)
    assert Path(locks._lock_path_for_key("k")).parent == tmp_path
    # The holder format Prefect writes is the one a dead holder is recognised by.
    holder = _adapter.lock_holder("token")
    assert holder.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert locks.acquire_lock("k", holder, acquire_timeout=1, hold_timeout=60)
    assert locks._get_lock_info("k", use_cache=False)["holder"] == holder
    locks.release_lock("k", holder)
