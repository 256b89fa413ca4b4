"""The project's global concurrency limit: everything that starts runs in one CML project
(scheduled window runs, backfills, on any machine) holds one of its slots while it starts a
run and, when following, until the run ends.

Slots are taken and given back through the process's one Prefect client, with a lease that
is renewed while held (a killed process's slot comes back when its lease ends, after
`SLOT_LEASE_SECONDS`); a wait longer than a second is logged with how many slots are in use.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from uuid import UUID

import httpx
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from cml_tasks.backfill import project_limit_name
from cml_tasks.job import JobRef
from cml_tasks.prefect.api import prefect_api
from cml_tasks.reconcile import Log

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when it has to be created."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's slots come back after a minute."""
RENEW_SECONDS = 20.0
WAIT_SECONDS = 0.25
"""Longest pause between two asks for a slot (Prefect's own answer may suggest more)."""
LOCKED = 423


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
    """Hold one slot of the named limit while inside (nothing when None: no project limit)."""
    if limit_name is None:
        yield
        return
    lease_id = _acquire(limit_name, log, what)
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, done), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        prefect_api().release_concurrency_slots_with_lease(lease_id)


def _acquire(name: str, log: Log, what: str) -> UUID:
    client = prefect_api()
    began = time.monotonic()
    told = False
    while True:
        try:
            answer = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=SLOT_LEASE_SECONDS
            )
        except httpx.HTTPStatusError as error:
            if error.response.status_code != LOCKED:
                raise
            suggested = float(error.response.headers.get("Retry-After", WAIT_SECONDS))
            pause = random.uniform(0.5, 1.0) * min(suggested, WAIT_SECONDS)
            if not told and time.monotonic() - began + pause > 1.0:
                limit = client.read_global_concurrency_limit_by_name(name)
                log.info(
                    "%s waits for a slot of %s: %d of %d in use (%s)",
                    what,
                    name,
                    limit.active_slots,
                    limit.limit,
                    resize_hint(name, limit.limit * 2),
                )
                told = True
            time.sleep(pause)
            continue
        return UUID(answer.json()["lease_id"])


def _renew(lease_id: UUID, done: threading.Event) -> None:
    while not done.wait(RENEW_SECONDS):
        prefect_api().renew_concurrency_lease(lease_id, lease_duration=SLOT_LEASE_SECONDS)
