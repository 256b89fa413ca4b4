"""`WindowStart` without a server: a window another process settled while this one meant to
start it is skipped with that process's run (a report or a grid links it)."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import date

from cml_tasks.backfill import (
    PlannedWindow,
    WindowOutcome,
    WindowRecord,
    WindowResult,
    WindowStatus,
    window_key,
)
from cml_tasks.client import CMLClient
from cml_tasks.job import JobRef
from cml_tasks.window_start import RecordClaim, WindowStart
from cml_tasks.windows import Window

JOB = JobRef.parse("https://cml.example.com/alice/risk-analysis/jobs/208")
WINDOW = Window(start=date(2017, 3, 1), end=date(2017, 4, 1))
KEY = window_key(JOB, WINDOW)
PLANNED = PlannedWindow(window=WINDOW, key=KEY, environment={"START_DATE": "2017-03-01"})
THEIRS = WindowRecord(
    key=KEY,
    job_url=JOB.page_url,
    window_start=WINDOW.start,
    window_end=WINDOW.last_day,
    environment=PLANNED.environment,
    status=WindowStatus.SUCCEEDED,
    engine_id="their-run",
    run_url=f"{JOB.page_url}/runs/their-run",
)


class _SettledMeanwhile:
    """Records where another process wrote `THEIRS` after this one listed the job's records:
    the claim on "no record" fails, and a read finds theirs."""

    holder = "me"

    def read(self, key: str) -> WindowRecord | None:
        return THEIRS

    def claim(
        self, key: str, seen: WindowRecord | None, record: WindowRecord
    ) -> AbstractContextManager[RecordClaim] | None:
        return None


def test_a_window_settled_meanwhile_is_skipped_with_the_other_process_run() -> None:
    window = WindowStart(
        job=JOB,
        planned=PLANNED,
        records=_SettledMeanwhile(),
        log=logging.getLogger("test"),
        seen=None,
        seen_is_current=True,
    )
    assert window.check() is None  # the listing said: no record, go on
    with CMLClient() as client:  # never asked: the record decides
        outcome = window.start(client)
    assert isinstance(outcome, WindowOutcome)
    assert outcome.result is WindowResult.SKIPPED
    assert (outcome.engine_id, outcome.run_url) == ("their-run", f"{JOB.page_url}/runs/their-run")
