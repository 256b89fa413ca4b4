"""How a window's record sits in Prefect variables: its names, and which of a window's
variables tells its current state. Shared by the records' writer (`prefect.records`) and the
readers that do not import Prefect (`prefect_rest`).

Per window: the record `cml-backfill-<id>` (the first claim), one outcome per settled attempt
`<record>-outcome-a<N>`, and for a take-over a claim `cml-claim-<id>-a<N>` while it is held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cml_tasks.backfill import KEY_PREFIX, WindowRecord

CLAIM_PREFIX = "cml-claim-"
OUTCOME_INFIX = "-outcome-a"
PAGE_SIZE = 200
"""Variables per page when a job's records are listed."""


def outcome_name(key: str, attempt: int) -> str:
    """The variable that holds attempt `attempt`'s outcome of window record `key`."""
    return f"{key}{OUTCOME_INFIX}{attempt}"


def claim_name(key: str, attempt: int) -> str:
    """The variable that claims attempt `attempt` of window record `key` for a take-over."""
    return f"{CLAIM_PREFIX}{key.removeprefix(KEY_PREFIX)}-a{attempt}"


def tagged(tag: str) -> dict[str, Any]:
    """The `/variables/filter` and `/variables/count` body for the variables carrying `tag`."""
    return {"variables": {"tags": {"all_": [tag]}}}


def newest_records(variables: Iterable[dict[str, Any]]) -> dict[str, WindowRecord]:
    """Each window's record, by key, from variables as the API lists them (`name`, `value`;
    claims of take-overs are skipped): the highest attempt, its outcome over its claim."""
    newest: dict[str, tuple[tuple[int, bool], WindowRecord]] = {}
    for variable in variables:
        if variable["name"].startswith(CLAIM_PREFIX):
            continue
        record = WindowRecord.model_validate(variable["value"])
        rank = (record.attempt, variable["name"] != record.key)
        if record.key not in newest or rank > newest[record.key][0]:
            newest[record.key] = (rank, record)
    return {key: record for key, (_, record) in newest.items()}


Page = Callable[[int, int], list[dict[str, Any]]]
"""One page of a job's variables as the API lists them, by (offset, limit)."""


def listed_records(page: Page) -> dict[str, WindowRecord]:
    """Each window's record (`newest_records`) from every page that `page` gives."""
    variables: list[dict[str, Any]] = []
    while True:
        found = page(len(variables), PAGE_SIZE)
        variables += found
        if len(found) < PAGE_SIZE:
            return newest_records(variables)
