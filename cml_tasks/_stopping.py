"""This process was told to stop (Ctrl-C, SIGTERM, SIGHUP), as every thread sees it.

A signal reaches only the main thread. A backfill's windows run in worker threads, which read
this between polls and while they wait for a slot: a followed run is stopped, a waiting
window gives up, and the command ends instead of waiting for them (nothing it started is
left running: its temporary Prefect server stops with it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_stopping = threading.Event()


def request_stop() -> None:
    """Called by the command's signal handler, before it interrupts the main thread."""
    _stopping.set()


def stop_requested() -> bool:
    return _stopping.is_set()


@contextmanager
def stopping_workers_if_interrupted() -> Iterator[None]:
    """Around a flow's wait for its windows: an interrupt there (KeyboardInterrupt, or the
    `TerminationSignal` Prefect raises for SIGTERM during a flow run) tells the workers to
    stop; else the task runner's shutdown would wait for their followed runs to end. A new
    wait starts unstopped: a process that lives on (a notebook after Ctrl-C, a test session)
    runs its next flow normally."""
    _stopping.clear()
    try:
        yield
    except BaseException as interrupt:
        if not isinstance(interrupt, Exception):
            request_stop()
        raise
