"""The project's global concurrency limit: everything that starts runs in one CML project
(scheduled window runs, backfills, on any machine) holds one of its slots while it starts a
run and, when following, until the run ends.

Slots are taken and given back through the process's one Prefect client, with a lease that
is renewed while held (a killed process's slot comes back when its lease ends, after
`SLOT_LEASE_SECONDS`); a wait longer than a second is logged with how many slots are in use.
A backfill keeps its slots from one window to the next (`keeping_slots`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from uuid import UUID

import httpx
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from cml_tasks._stopping import stop_requested
from cml_tasks.backfill import project_limit_name
from cml_tasks.errors import CMLWaitCancelled
from cml_tasks.job import JobRef
from cml_tasks.prefect._adapter import without_client_retries
from cml_tasks.prefect.api import prefect_api
from cml_tasks.reconcile import Log

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when it has to be created."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's slots come back after a minute."""
RENEW_SECONDS = 20.0
MAX_HOLD_SECONDS = 10.0
"""A slot kept between windows for longer than this goes back after its window."""
WAIT_SECONDS = 0.25
"""Longest pause between two asks for a slot (Prefect's own answer may suggest more)."""
BUSY_SECONDS = 1.0
"""Longest pause before asking a busy Prefect server (503) for a slot again."""
BUSY_STRETCH_SECONDS = 10.0
"""Busy answers less than this apart are one stretch of waiting, logged once."""
MAX_BUSY_SECONDS = 300.0
"""How long a window asks a busy server for a slot before it fails (nothing started)."""
LOCKED = 423
BUSY = 503
LEASE_GONE = {404, 410}
"""The server's answers to renewing a lease it no longer has (410 in Prefect 3.9)."""


def ensure_project_limit(job: JobRef, size: int = DEFAULT_PROJECT_LIMIT) -> str:
    """Create the project's global concurrency limit if missing (an existing one is kept).

    Returns its name, e.g. `cml-project:alice:risk-analysis`; change its size in the UI or
    with `prefect global-concurrency-limit update <name> --limit N`.
    """
    name = project_limit_name(job)
    client = prefect_api()
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        with suppress(ObjectAlreadyExists):  # another process created it meanwhile
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=size)
            )
    return name


def limit_size(name: str) -> int:
    """How many slots the named limit has now."""
    return prefect_api().read_global_concurrency_limit_by_name(name).limit


def resize_hint(name: str, wanted: int) -> str:
    """The command that gives the project's limit `wanted` slots."""
    return f"prefect global-concurrency-limit update {name} --limit {wanted}"


@contextmanager
def project_slot(limit_name: str | None, log: Log, what: str) -> Iterator[None]:
    """Hold one slot of the named limit while inside (nothing when None: no project limit).

    Inside `keeping_slots` the slot is one the process kept from its previous window, if
    any, and is kept again afterwards; otherwise it is taken and given back here.
    """
    if limit_name is None:
        yield
        return
    kept = _keeping.get()
    if kept is None or kept.name != limit_name:
        with keeping_slots(limit_name), project_slot(limit_name, log, what):
            yield
        return
    lease = _acquire(kept, log, what)
    try:
        yield
    finally:
        kept.give_back(lease)


@contextmanager
def keeping_slots(limit_name: str | None) -> Iterator[None]:
    """Keep the slots this process's windows take between one window and the next while
    inside (a backfill): a lane of windows costs one take and one give-back of a slot, not
    two calls per window. Every kept slot goes back on exit; a slot held longer than
    `MAX_HOLD_SECONDS` goes back after its window, so other processes waiting get their turn.
    """
    if limit_name is None:
        yield
        return
    kept = _KeptSlots(limit_name)
    token = _keeping.set(kept)
    try:
        yield
    finally:
        _keeping.reset(token)
        kept.close()


@dataclass(eq=False)
class _Lease:
    id: UUID
    taken_at: float = field(default_factory=time.monotonic)
    lost: bool = False
    """The server no longer knows it (it ran out, e.g. while the process was paused)."""


class _KeptSlots:
    """A process's slots of one limit: in use, or kept idle for its next window; one thread
    renews all their leases."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._leases: set[_Lease] = set()
        self._idle: list[_Lease] = []
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def add(self, lease_id: UUID) -> _Lease:
        lease = _Lease(lease_id)
        with self._lock:
            self._leases.add(lease)
        return lease

    def take(self) -> _Lease | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give_back(self, lease: _Lease) -> None:
        with self._lock:
            keep = not self._closed.is_set() and (
                time.monotonic() - lease.taken_at < MAX_HOLD_SECONDS
            )
            if keep and not lease.lost:
                self._idle.append(lease)
                return
            self._leases.discard(lease)
        if not lease.lost:
            prefect_api().release_concurrency_slots_with_lease(lease.id)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            idle, self._idle = self._idle, []
            self._leases.difference_update(idle)
        self._renewer.join()
        for lease in idle:
            prefect_api().release_concurrency_slots_with_lease(lease.id)

    def _renew(self) -> None:
        while not self._closed.wait(RENEW_SECONDS):
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                try:
                    prefect_api().renew_concurrency_lease(
                        lease.id, lease_duration=SLOT_LEASE_SECONDS
                    )
                except httpx.HTTPStatusError as error:  # else: transient, next round
                    if error.response.status_code in LEASE_GONE:  # given back, or ran out
                        self._forget(lease)
                except httpx.TransportError:
                    pass

    def _forget(self, lease: _Lease) -> None:
        """A lease the server no longer has is never lent to another window."""
        with self._lock:
            lease.lost = True
            self._leases.discard(lease)
            if lease in self._idle:
                self._idle.remove(lease)


_keeping: ContextVar[_KeptSlots | None] = ContextVar("cml_kept_project_slots", default=None)


def _acquire(kept: _KeptSlots, log: Log, what: str) -> _Lease:
    """A slot kept idle by this process, else a new one from the server (waiting while the
    limit is full, and taking a kept one as soon as another window of this process ends).

    A busy server (503, e.g. SQLite's "database is locked"; or a dropped connection) is asked
    again here after at most `BUSY_SECONDS`, for up to `MAX_BUSY_SECONDS`: nothing has been
    started yet, and the client's own resends would leave the window idle for 2, 4, 8... s,
    then fail it."""
    client = prefect_api()
    name = kept.name
    began = time.monotonic()
    told = False
    while True:
        if (lease := kept.take()) is not None:
            return lease
        if stop_requested():
            raise CMLWaitCancelled(f"Stopped waiting for a slot of {name}: interrupted")
        try:
            with without_client_retries():
                answer = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=SLOT_LEASE_SECONDS
                )
        except (httpx.HTTPStatusError, httpx.TransportError) as error:
            response = error.response if isinstance(error, httpx.HTTPStatusError) else None
            busy: str | None = None  # why the server could not answer; None: the limit is full
            if response is not None and response.status_code == LOCKED:
                suggested = float(response.headers.get("Retry-After", WAIT_SECONDS))
                pause = random.uniform(0.5, 1.0) * min(suggested, WAIT_SECONDS)
            elif response is None or response.status_code == BUSY:
                if time.monotonic() - began > MAX_BUSY_SECONDS:
                    raise
                busy = type(error).__name__ if response is None else f"HTTP {BUSY}"
                pause = random.uniform(0.5, 1.0) * BUSY_SECONDS
            else:
                raise
            if busy is not None:
                if _busy_stretch.begins():
                    _tell_wait(log, what, name, busy)
            elif not told and time.monotonic() - began + pause > 1.0:
                _tell_wait(log, what, name, None)
                told = True
            time.sleep(pause)
            continue
        return kept.add(UUID(answer.json()["lease_id"]))


class _BusyStretch:
    """The process's stretches of busy answers: said once each, whichever window meets one
    first (a busy SQLite server answers every waiting window 503: one line, not hundreds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -math.inf

    def begins(self) -> bool:
        """Note a busy answer now; True when it begins a stretch (none for a while)."""
        with self._lock:
            now = time.monotonic()
            fresh = now - self._last > BUSY_STRETCH_SECONDS
            self._last = now
            return fresh


_busy_stretch = _BusyStretch()


def _tell_wait(log: Log, what: str, name: str, busy: str | None) -> None:
    """Say why a window waits for a slot: the server is `busy`, or the limit is full."""
    if busy is not None:
        log.info("%s waits for a slot of %s: the Prefect server is busy (%s)", what, name, busy)
        return
    limit = prefect_api().read_global_concurrency_limit_by_name(name)
    log.info(
        "%s waits for a slot of %s: %d of %d in use (%s)",
        what,
        name,
        limit.active_slots,
        limit.limit,
        resize_hint(name, limit.limit * 2),
    )
