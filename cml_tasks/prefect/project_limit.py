"""The project's global concurrency limit: everything that starts runs in one CML project
(scheduled window runs, backfills, on any machine) holds one of its slots while it starts a
run and, when following, until the run ends.

Slots are taken and given back through the process's one Prefect client, with a lease that
is renewed while held (a killed process's slot comes back when its lease ends, after
`SLOT_LEASE_SECONDS`); a wait longer than a second is logged with how many slots are in use,
and again every `RETELL_SECONDS`. A backfill keeps its slots from one window to the next
(`keeping_slots`).

A Prefect server that restarts with its leases in memory (Prefect 3.9's default) forgets
them while its limit still counts their slots taken, for good. A holder notices when the
server no longer knows a lease it renewed moments ago, and gives that slot back by name.
"""

from __future__ import annotations

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
from prefect.logging import get_logger

from cml_tasks._stopping import stop_requested
from cml_tasks._stretch import Stretch
from cml_tasks.backfill import project_limit_name
from cml_tasks.errors import CMLWaitCancelled
from cml_tasks.job import JobRef
from cml_tasks.prefect._adapter import without_client_retries
from cml_tasks.prefect.api import prefect_api
from cml_tasks.prefect_rest import FILE_LEASE_STORAGE
from cml_tasks.reconcile import Log

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when it has to be created."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's slots come back after a minute."""
RENEW_SECONDS = 20.0
FORGOTTEN_SECONDS = SLOT_LEASE_SECONDS - 10.0
"""A lease renewed less than this ago that the server no longer has was forgotten (a
restart), not run out: its slot is given back by name (10 s for clocks and slow answers)."""
MAX_HOLD_SECONDS = 10.0
"""A slot kept between windows for longer than this goes back after its window."""
WAIT_SECONDS = 0.25
"""Longest pause between two asks for a slot (Prefect's own answer may suggest more)."""
BUSY_SECONDS = 1.0
"""Longest pause before asking a busy Prefect server (503) for a slot again."""
BUSY_STRETCH_SECONDS = 10.0
"""Busy answers less than this apart are one stretch of waiting, logged once."""
MAX_BUSY_SECONDS = 300.0
"""How long a window asks a busy or unreachable server for a slot before it fails (nothing
started)."""
RETELL_SECONDS = 60.0
"""A window waiting for a slot says so again after this long."""
STUCK_SECONDS = SLOT_LEASE_SECONDS + RENEW_SECONDS + 10.0
"""After this long on a full limit, a wait names the way out of slots that nobody holds: by
then every live holder has renewed, and given back what a restarted server forgot."""
LOCKED = 423
BUSY = 503
LEASE_GONE = {404, 410}
"""The server's answers to renewing a lease it no longer has (410 in Prefect 3.9)."""

logger = get_logger("cml_tasks.project_limit")


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
    renewed_at: float = field(default_factory=time.monotonic)
    gone: bool = False
    """No longer this process's: given back, or the server no longer knows it (it ran out,
    e.g. while the process was paused, or the server restarted)."""


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
            if keep and not lease.gone:
                self._idle.append(lease)
                return
            self._leases.discard(lease)
        self._release(lease)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            idle, self._idle = self._idle, []
            self._leases.difference_update(idle)
        self._renewer.join()
        for lease in idle:
            self._release(lease)

    def _release(self, lease: _Lease) -> None:
        """Give a lease's slot back. A server that forgot the lease ignores its give-back,
        so the lease is renewed first: one it no longer has is `_forget`-ten instead."""
        if not self._still_known(lease):
            return
        with self._lock:
            if lease.gone:
                return
            lease.gone = True
        prefect_api().release_concurrency_slots_with_lease(lease.id)

    def _renew(self) -> None:
        while not self._closed.wait(RENEW_SECONDS):
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                self._still_known(lease)

    def _still_known(self, lease: _Lease) -> bool:
        """Renew the lease; False once the server no longer has it (then `_forget` it)."""
        try:
            prefect_api().renew_concurrency_lease(lease.id, lease_duration=SLOT_LEASE_SECONDS)
        except httpx.HTTPStatusError as error:  # else: transient, the next renewal tells
            if error.response.status_code in LEASE_GONE:  # given back, ran out, or forgotten
                self._forget(lease)
                return False
        except httpx.TransportError:
            pass
        else:
            lease.renewed_at = time.monotonic()
        return True

    def _forget(self, lease: _Lease) -> None:
        """A lease the server no longer has is never lent to another window. One it had
        moments ago was forgotten by a restart: its slot, still counted, is given back by
        name."""
        with self._lock:
            if lease.gone:
                return  # given back meanwhile
            lease.gone = True
            self._leases.discard(lease)
            if lease in self._idle:
                self._idle.remove(lease)
        if time.monotonic() - lease.renewed_at >= FORGOTTEN_SECONDS:
            return  # it ran out: the server took its slot back then
        prefect_api().release_concurrency_slots(
            names=[self.name], slots=1, occupancy_seconds=time.monotonic() - lease.taken_at
        )
        logger.warning(
            "The Prefect server forgot a lease of %s (it restarted, keeping leases in "
            "memory): gave its slot back. Keep leases in files across restarts: "
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=%s",
            self.name,
            FILE_LEASE_STORAGE,
        )


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
    tell_at = 1.0  # seconds of waiting on a full limit before (again) saying so
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
            waited = time.monotonic() - began
            busy: str | None = None  # why the server could not answer; None: the limit is full
            if response is not None and response.status_code == LOCKED:
                suggested = float(response.headers.get("Retry-After", WAIT_SECONDS))
                pause = random.uniform(0.5, 1.0) * min(suggested, WAIT_SECONDS)
            elif response is None or response.status_code == BUSY:
                if waited > MAX_BUSY_SECONDS:
                    raise
                busy = (
                    f"the Prefect API is unreachable ({type(error).__name__})"
                    if response is None
                    else f"the Prefect server is busy (HTTP {BUSY})"
                )
                pause = random.uniform(0.5, 1.0) * BUSY_SECONDS
            else:
                raise
            if busy is not None:
                if _busy_stretch.begins():
                    log.info(
                        "%s waits for a slot of %s: %s; asking again for up to %d s",
                        what,
                        name,
                        busy,
                        MAX_BUSY_SECONDS,
                    )
            elif waited + pause > tell_at:
                _tell_full(log, what, name, waited)
                tell_at = waited + RETELL_SECONDS
            time.sleep(pause)
            continue
        return kept.add(UUID(answer.json()["lease_id"]))


_busy_stretch = Stretch(BUSY_STRETCH_SECONDS)
"""The process's stretches of busy answers (a busy SQLite server answers every waiting
window 503: one line, not hundreds)."""


def _tell_full(log: Log, what: str, name: str, waited: float) -> None:
    """Say that a window waits on a full limit: how many slots are in use and how to get
    more; after `STUCK_SECONDS`, also how long and how to free slots that nobody holds."""
    limit = prefect_api().read_global_concurrency_limit_by_name(name)
    in_use = f"{limit.active_slots} of {limit.limit} in use ({resize_hint(name, limit.limit * 2)})"
    if waited <= STUCK_SECONDS:
        log.info("%s waits for a slot of %s: %s", what, name, in_use)
        return
    log.warning(
        "%s has waited %d s for a slot of %s: %s. If no run holds them (a Prefect server "
        "restarted with leases in memory while their holders were gone), free them: "
        "prefect global-concurrency-limit update %s --active-slots 0",
        what,
        waited,
        name,
        in_use,
        name,
    )
