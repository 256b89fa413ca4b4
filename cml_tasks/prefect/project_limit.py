"""The project's global concurrency limit: everything that starts runs in one CML project
(scheduled window runs, backfills, on any machine) holds one of its slots while it starts a
run and, when following, until the run ends."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from cml_tasks.backfill import project_limit_name
from cml_tasks.job import JobRef

DEFAULT_PROJECT_LIMIT = 4
"""Size of a project's global concurrency limit when it has to be created."""
SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum lease: a killed process's slots come back after a minute. Prefect renews
the lease in the background while a slot is held (e.g. while following)."""


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
            with suppress(ObjectAlreadyExists):  # another process created it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=size)
                )
    return name


def project_slot(limit_name: str | None) -> AbstractContextManager[object]:
    """Hold one slot of the named limit (nothing when None: no project limit)."""
    if limit_name is None:
        return nullcontext()
    return concurrency(limit_name, occupy=1, lease_duration=SLOT_LEASE_SECONDS, strict=True)
