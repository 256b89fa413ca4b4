"""Start one window of a job safely: the one path of scheduled runs and backfills alike.

The window's record says whether it was started; a claim on the record makes the decision and
the start one step, so two processes never both start it. A `starting` record is written
before the start call: if the process dies mid-call, the next attempt knows the outcome is
unknown. With the API v2 key set it asks CML (a run of the job with exactly this environment,
created since the attempt) and adopts that run, or starts the window if there is none.
Without it the window is reported, never started again blindly.

No Prefect here: records and claims come through `WindowRecords`, the project's concurrency
slot is held by the caller, and following a run to its end is the caller's too.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cml_tasks.backfill import (
    Action,
    PlannedWindow,
    Reprocess,
    WindowOutcome,
    WindowRecord,
    WindowResult,
    WindowStatus,
    decide_record,
)
from cml_tasks.client import CMLClient
from cml_tasks.errors import CMLError, CMLOutcomeUnknown
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.reconcile import SETTLE_SECONDS, Log, find_started_run, start_run, start_v1_run

UNDATED_UNKNOWN_MARGIN = timedelta(minutes=10)
"""An `outcome_unknown` record without `attempted_at` (older versions) was written after the
call: look this far before it for the run."""
EVER = datetime(1970, 1, 1, tzinfo=UTC)
"""The attempt time of a window whose record was lost: CML is asked for its runs of all time."""


class RecordClaim(Protocol):
    """A window's record, held exclusively until the claim is released."""

    @property
    def record(self) -> WindowRecord | None:
        """The record as it was when the claim was taken (None: never written, or torn)."""

    @property
    def torn_at(self) -> datetime | None:
        """When a record that exists but cannot be read was written (its writer died
        mid-write); None when the record was read."""

    def write(self, record: WindowRecord) -> None:
        """Replace the record (still holding the claim)."""


class WindowRecords(Protocol):
    """Where each window's record lives and who may change it."""

    def claim(self, key: str) -> AbstractContextManager[RecordClaim]:
        """Hold the window's record exclusively (waiting for another holder)."""

    def peek(self, key: str) -> WindowRecord | None:
        """The record as stored now, without waiting for a claim (for observers)."""


@dataclass
class WindowStart:
    """One window of `job` to start once: `check` before taking the project's slot, `start`
    while holding it; a run to follow comes back as a `JobRun`."""

    job: JobRef
    planned: PlannedWindow
    records: WindowRecords
    log: Log
    reprocess: Reprocess = Reprocess.MISSING
    follow: bool = False
    can_reconcile: bool = False
    """The v2 key is set: an unknown outcome is resolved by asking CML."""
    begun: datetime = field(default_factory=lambda: datetime.now(UTC))
    resume: bool = False
    """With `follow`: the window is `started` already, follow its run again."""

    def check(self) -> WindowOutcome | None:
        """The window's outcome if there is nothing to start (skipped); None to go on.

        Cheap, and taken before the project's slot, so skipped windows never wait for one.
        """
        with self.records.claim(self.planned.key) as claim:
            record = self._read(claim)
        action, reason = decide_record(record, self.reprocess)
        if action is Action.UNKNOWN and not self.can_reconcile:
            raise CMLOutcomeUnknown(
                f"{self.planned.label}: not started, {reason} (or set CML_API_V2_KEY: the "
                "backfill then asks CML itself)",
                job_url=self.job.page_url,
            )
        self.resume = self.follow and action is Action.SKIP and _followable(record)
        if action is Action.SKIP and not self.resume:
            return self._skipped(reason)
        return None

    def start(self, client: CMLClient) -> WindowOutcome | JobRun:
        """Decide again under the claim, then start, adopt or resume; record what happened.

        Returns the outcome, or (with `follow`) the run to follow to its end.
        """
        with self.records.claim(self.planned.key) as claim:
            record = self._read(claim)
            action, reason = decide_record(record, self.reprocess)
            if self.resume:
                if record is None or not _followable(record):
                    status = record.status if record else "?"
                    return self._skipped(f"already {status}")
                assert record.engine_id is not None
                run = client.get_run(self.job, record.engine_id)
                self.log.info("Following %s's run %s again: %s", self.planned.label, run.id, reason)
                return run
            if record is not None and record.updated_at >= self.begun:
                return self._skipped(f"started meanwhile by another backfill: {reason}")
            if action is Action.SKIP:
                return self._skipped(reason)
            if action is Action.UNKNOWN:
                assert record is not None
                found = self._reconcile(client, record)
                if found is not None:
                    return self._adopt(claim, found, record, reason)
                reason = f"CML has no run of it: starting it safely ({reason})"
            return self._start(claim, client, reason)

    def _read(self, claim: RecordClaim) -> WindowRecord | None:
        """A torn record may hide a started run: it counts as an unknown outcome since ever,
        resolved by asking CML for a run with this environment, never by starting blindly."""
        if claim.torn_at is None:
            return claim.record
        return self.record(
            WindowStatus.OUTCOME_UNKNOWN,
            error="the window's record is unreadable: its writer died mid-write",
            attempted_at=EVER,
            updated_at=claim.torn_at,
        )

    def _skipped(self, reason: str) -> WindowOutcome:
        self.log.info("Skipping %s: %s", self.planned.label, reason)
        return WindowOutcome.of(self.job, self.planned, WindowResult.SKIPPED, reason=reason)

    def _reconcile(self, client: CMLClient, record: WindowRecord) -> JobRun | None:
        """The run a `starting`/`outcome_unknown` attempt created, if CML has one (API v2)."""
        since = record.attempted_at
        if since is None:
            since = record.updated_at
            if record.status is WindowStatus.OUTCOME_UNKNOWN:
                since -= UNDATED_UNKNOWN_MARGIN
        # A start in flight when its process died may still be landing: give it a moment.
        pause = SETTLE_SECONDS - (datetime.now(UTC) - since).total_seconds()
        if pause > 0:
            time.sleep(pause)
        try:
            return find_started_run(client, self.job, self.planned.environment, since)
        except CMLError as error:
            raise CMLOutcomeUnknown(
                f"{self.planned.label}: a previous start's outcome is unknown and CML could not "
                f"be asked about it: {error}",
                job_url=self.job.page_url,
            ) from error

    def _adopt(
        self, claim: RecordClaim, run: JobRun, record: WindowRecord, reason: str
    ) -> WindowOutcome | JobRun:
        self.log.warning(
            "%s: %s; CML has run %s with exactly this environment: adopting it",
            self.planned.label,
            reason,
            run.id,
        )
        claim.write(
            self.record(
                WindowStatus.STARTED,
                engine_id=run.id,
                attempted_at=record.attempted_at,
                run_url=run.page_url,
            )
        )
        if self.follow:
            return run
        return WindowOutcome.of(
            self.job,
            self.planned,
            WindowResult.STARTED,
            engine_id=run.id,
            run_url=run.page_url,
            reason=f"adopted run {run.id}: {reason}",
        )

    def _start(self, claim: RecordClaim, client: CMLClient, reason: str) -> WindowOutcome | JobRun:
        """Record the intent, start, record the result (v2 when followed, else v1)."""
        job, planned = self.job, self.planned
        attempted_at = datetime.now(UTC)
        claim.write(self.record(WindowStatus.STARTING, attempted_at=attempted_at))
        run: JobRun | None = None
        try:
            if self.follow:
                run = start_run(client, job, planned.environment, log=self.log)
                run_id = run.id
            else:
                run_id = start_v1_run(
                    client, job, planned.environment, reconcile=self.can_reconcile, log=self.log
                )
        except CMLOutcomeUnknown as error:
            claim.write(
                self.record(
                    WindowStatus.OUTCOME_UNKNOWN, error=str(error), attempted_at=attempted_at
                )
            )
            raise
        except CMLError as error:
            claim.write(
                self.record(WindowStatus.START_FAILED, error=str(error), attempted_at=attempted_at)
            )
            raise
        run_url = f"{job.page_url}/runs/{run_id}"
        claim.write(
            self.record(
                WindowStatus.STARTED, engine_id=run_id, attempted_at=attempted_at, run_url=run_url
            )
        )
        self.log.info(
            "Started %s for %s (%s): run %s, %s", job.slug, planned.label, reason, run_id, run_url
        )
        if run is not None:
            return run
        return WindowOutcome.of(
            job, planned, WindowResult.STARTED, engine_id=run_id, run_url=run_url, reason=reason
        )

    def record(self, status: WindowStatus, **fields: Any) -> WindowRecord:
        """This window's record with `status` and `fields`."""
        return WindowRecord(
            key=self.planned.key,
            job_url=self.job.page_url,
            window_start=self.planned.window.start,
            window_end=self.planned.window.end,
            environment=self.planned.environment,
            status=status,
            **fields,
        )

    def finish(self, status: WindowStatus, **fields: Any) -> WindowRecord:
        """Record how a followed run ended (taking the claim again)."""
        with self.records.claim(self.planned.key) as claim:
            record = self.record(status, **fields)
            claim.write(record)
        return record


def _followable(record: WindowRecord | None) -> bool:
    """A window recorded `started` with a run id: a rerun with follow follows it to the end."""
    return (
        record is not None
        and record.status is WindowStatus.STARTED
        and record.engine_id is not None
    )
