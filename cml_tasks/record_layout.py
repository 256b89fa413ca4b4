"""How a window's record sits in Prefect variables: its names, and how a job's records are read
back from a listing. Shared by the records' writer (`prefect.records`) and the readers that do
not import Prefect (`prefect_rest`).

Per window, one variable a person can find on the Variables page by job or date
(`backfill.window_key`: `cml-risk-analysis-208-2017-11-01-2017-11-30-<12 hex>`), tagged `cml`
and `cml-job:risk-analysis/208` as the job's runs are; its value is the window's state now.
While a process takes over a window that has a record, a claim `cml-claim-<...>-a<N>` stands
beside it; it goes when the take-over ends.

Records written before (`cml-backfill-<40 hex>`, the outcome of attempt N beside it as
`<record>-outcome-a<N>`, tagged `cml-job-<16 hex>`, `window_end` the day after) are still read,
as the same window, and replaced by the readable record when the window is next written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from cml_tasks.backfill import (
    KEY_DIGEST_CHARS,
    LEGACY_KEY_PREFIX,
    WindowRecord,
    job_tag,
    legacy_job_tag,
    legacy_key_of,
)
from cml_tasks.job import JobRef

CLAIM_PREFIX = "cml-claim-"
LEGACY_OUTCOME_INFIX = "-outcome-a"
PAGE_SIZE = 200
"""Variables per page when a job's records are listed."""


def claim_name(key: str, attempt: int) -> str:
    """The variable that claims attempt `attempt` of window record `key` for a take-over."""
    return f"{CLAIM_PREFIX}{key.removeprefix('cml-')}-a{attempt}"


def listing_tags(job: JobRef) -> tuple[str, str]:
    """The tags that list `job`'s records: today's readable one, and the one from before."""
    return job_tag(job), legacy_job_tag(job)


def tagged(tag: str) -> dict[str, Any]:
    """The `/variables/filter` and `/variables/count` body for the variables carrying `tag`."""
    return {"variables": {"tags": {"all_": [tag]}}}


def named_like(text: str) -> dict[str, Any]:
    """The `/variables/filter` body for the variables whose name contains `text`."""
    return {"variables": {"name": {"like_": text}}}


_LEGACY_NAME = re.compile(rf"{LEGACY_KEY_PREFIX}[0-9a-f]{{40}}({LEGACY_OUTCOME_INFIX}\d+)?")


def is_legacy(name: str) -> bool:
    """A variable of a record from before (not a readable key of a project named
    `backfill`)."""
    return _LEGACY_NAME.fullmatch(name) is not None


def legacy_record(variables: Iterable[dict[str, Any]]) -> WindowRecord | None:
    """A window's record from its variables of before (`name`, `value`): the highest attempt,
    its outcome over its record, with `window_end` made inclusive."""
    newest: tuple[tuple[int, bool], WindowRecord] | None = None
    for variable in variables:
        record = WindowRecord.model_validate(variable["value"])
        rank = (record.attempt, variable["name"] != record.key)
        if newest is None or rank > newest[0]:
            newest = (rank, record)
    if newest is None:
        return None
    record = newest[1]
    return record.model_copy(update={"window_end": record.window_end - timedelta(days=1)})


def job_records(job: JobRef, variables: Iterable[dict[str, Any]]) -> dict[str, WindowRecord]:
    """`job`'s records from its listed variables, by key (a record of before by the start of
    its key, `legacy_key_of`: look one up with `find`); claims and other jobs' records are
    left out."""
    found: dict[str, WindowRecord] = {}
    legacy: dict[str, list[dict[str, Any]]] = {}
    for variable in variables:
        name = variable["name"]
        if name.startswith(CLAIM_PREFIX) or not isinstance(variable.get("value"), dict):
            continue
        if is_legacy(name):
            legacy.setdefault(name.split(LEGACY_OUTCOME_INFIX)[0], []).append(variable)
            continue
        record = WindowRecord.model_validate(variable["value"])
        if record.job_url == job.page_url:
            found[record.key] = record
    for key, group in legacy.items():
        old = legacy_record(group)
        if old is not None and old.job_url == job.page_url:
            found[key[: len(LEGACY_KEY_PREFIX) + KEY_DIGEST_CHARS]] = old
    return found


def find(records: Mapping[str, WindowRecord], key: str) -> WindowRecord | None:
    """The record of window `key` among `job_records`: today's, else the one from before."""
    return records.get(key) or records.get(legacy_key_of(key))


Page = Callable[[str, int, int], list[dict[str, Any]]]
"""One page of the variables carrying a tag, as the API lists them, by (tag, offset, limit)."""


def listed_records(job: JobRef, page: Page) -> dict[str, WindowRecord]:
    """`job_records` from every page that `page` gives for the job's two tags."""
    variables: list[dict[str, Any]] = []
    for tag in listing_tags(job):
        offset = 0
        while True:
            found = page(tag, offset, PAGE_SIZE)
            variables += found
            offset += len(found)
            if len(found) < PAGE_SIZE:
                break
    return job_records(job, variables)
