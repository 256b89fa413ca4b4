"""The backfill's per-window file locks after a SIGKILL: a dead holder's lock is free at once,
a lock file its holder died before writing is free after `TORN_LOCK_SECONDS`, live ones hold."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cml_tasks.prefect._adapter import TORN_LOCK_SECONDS, DeadHolderAwareLocks

KEY = "cml-backfill-window"


def _lock_file(locks: DeadHolderAwareLocks, content: bytes) -> Path:
    path = Path(locks._lock_path_for_key(KEY))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _holder(pid: int) -> bytes:
    return f'{{"holder": "{socket.gethostname()}:{pid}:x", "expiration": null}}'.encode()


def _acquire(locks: DeadHolderAwareLocks, timeout: float) -> bool:
    return locks.acquire_lock(KEY, "me", acquire_timeout=timeout, hold_timeout=60)


def test_lock_of_a_live_holder_is_held(tmp_path: Path) -> None:
    locks = DeadHolderAwareLocks(tmp_path)
    _lock_file(locks, _holder(os.getpid()))
    assert not _acquire(locks, timeout=0.3)


def test_lock_of_a_dead_process_is_free_at_once(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    locks = DeadHolderAwareLocks(tmp_path)
    _lock_file(locks, _holder(int(finished.stdout)))
    assert _acquire(locks, timeout=0.3)
    assert locks.is_lock_holder(KEY, "me")


def test_lock_file_being_written_is_held(tmp_path: Path) -> None:
    locks = DeadHolderAwareLocks(tmp_path)
    _lock_file(locks, b"")
    assert not _acquire(locks, timeout=0.3)


def test_lock_file_left_empty_by_a_killed_holder_frees_itself(tmp_path: Path) -> None:
    locks = DeadHolderAwareLocks(tmp_path)
    path = _lock_file(locks, b"")
    then = time.time() - TORN_LOCK_SECONDS - 1
    os.utime(path, (then, then))
    assert _acquire(locks, timeout=0.3)
    assert locks.is_lock_holder(KEY, "me")
