"""Every use of a Prefect internal, in one place.

Prefect's public API does not offer these; each is pinned by a test in
`tests/test_prefect_adapter.py` that fails when a Prefect upgrade changes it, so an upgrade
breaks one module and one test file, not the behaviour of a backfill in production.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from prefect.filesystems import WritableFileSystem
from prefect.locking.filesystem import FileSystemLockManager
from prefect.results import get_default_result_storage

TORN_LOCK_SECONDS = 10.0
"""A lock file left empty this long was created by a holder that died before writing it."""


def cancel_requested() -> bool:
    """True once Prefect's runner has told this process it is cancelling the flow run.

    The runner (`serve`, a process worker) sends the intent over its control channel just
    before SIGTERM; the SIGTERM reaches only the main thread, so task runs in worker threads
    read the intent instead. Internal: `prefect._internal.control_listener.get_intent`.
    """
    from prefect._internal.control_listener import get_intent

    return get_intent() == "cancel"


def default_result_storage() -> WritableFileSystem:
    """The default result storage, resolved synchronously (the public call is async-first:
    `get_default_result_storage` takes the internal `_sync=True`)."""
    storage = get_default_result_storage(_sync=True)  # type: ignore[call-arg]
    assert isinstance(storage, WritableFileSystem)
    return storage


def decode_result_record(content: bytes, serializer: Any) -> object:
    """The value in a stored result record's bytes (internal `ResultRecord.deserialize`)."""
    from prefect._internal.result_records import ResultRecord

    return ResultRecord.deserialize(content, backup_serializer=serializer).result


class DeadHolderAwareLocks(FileSystemLockManager):
    """Prefect's file locks, made safe against SIGKILL and against torn lock files.

    A lock whose holder was a process on this host that no longer exists is free, so a rerun
    after a kill does not wait for the lock's hold timeout. Prefect creates a lock file, then
    writes its holder: a file still empty is being written by another process and counts as
    held, unless it has stayed empty for `TORN_LOCK_SECONDS` (its holder died in between).
    Internal: overrides `_get_lock_info` and clears the `_locks` cache.
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


def lock_holder(token: str) -> str:
    """A holder id that names this host and process, so a dead holder can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


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
