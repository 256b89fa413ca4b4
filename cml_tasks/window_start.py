"""Start one window of a job safely: the one path of scheduled runs and backfills alike.

The window's record says whether it was started; a claim on the record (held by one process,
with a lease that ends if the process dies) makes the decision and the start one step, so two
processes - on one machine or many - never both start it. A `starting` record is written
before the start call: if the process dies mid-call, the next attempt knows the outcome is
unknown. With the API v2 key set it asks CML (a run of the job with exactly this environment,
created since the attempt) and adopts that run, or starts the window if there is none.
Without it the window is reported, never started again blindly. With the v2 key, CML is also
the final witness for a window without a record: a run with exactly its environment is
adopted, not started again.

No Prefect here: records and claims come through `WindowRecords`, the project's concurrency
slot is held by the caller, and following a run to its end is the caller's too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
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
from cml_tasks.errors import CMLError, CMLOutcomeUnknown, CMLRecordError
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.reconcile import SETTLE_SECONDS, Log, find_started_run, start_run, start_v1_run

UNDATED_UNKNOWN_MARGIN = timedelta(minutes=10)
"""An `outcome_unknown` record without `attempted_at` (older versions) was written after the
call: look this far before it for the run."""
CLAIM_ROUNDS = 5
"""How often a window is read and claimed again when other processes keep changing it."""
WAIT_POLL_SECONDS = 1.0
"""How often a window held by another process is read again while waiting for it."""

Witness = Callable[[Mapping[str, str]], JobRun | None]
"""CML's own answer for a window without a record: its run with exactly this environment."""


class RecordClaim(Protocol):
    """A window held by this process: its record, written while the claim's lease runs."""

    def write(self, record: WindowRecord) -> None:
        """Replace the record and keep holding it."""

    def release(self, record: WindowRecord) -> None:
        """Write the settled record and let the window go (`CMLRecordError` if it cannot)."""


class WindowRecords(Protocol):
    """Where each window's record lives, and who may change it: the one source of truth for
    "was this window started"."""

    holder: str
    """This process's holder id, written into the records it claims."""

    def read(self, key: str) -> WindowRecord | None:
        """The window's record as stored now; None if it has none."""

    def claim(
        self, key: str, seen: WindowRecord | None, record: WindowRecord
    ) -> AbstractContextManager[RecordClaim] | None:
        """Write `record` and hold the window, if its record is still `seen` (None: it had
        none); None if another process changed or claimed it first."""


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
    witness: Witness | None = None
    """With the v2 key: CML's run of a window that has no record, adopted instead of a start."""
    seen: WindowRecord | None = None
    """The record as last read (a backfill reads all of a job's records at once)."""
    seen_is_current: bool = False
    """`seen` was read just now: `check` need not read it again (a stale one only costs a
    failed claim and a second read)."""
    retry_failed: bool = False
    """A failed run is started again under `missing` too (a pipeline's step)."""

    def check(self) -> WindowOutcome | None:
        """The window's outcome if there is nothing to start (skipped); None to go on.

        Cheap, and taken before the project's slot, so skipped windows never wait for one.
        """
        stale = self.seen is not None and self.seen.status is WindowStatus.STARTING
        if not self.seen_is_current or stale:  # a start then in flight has moved on since
            self.seen = self.records.read(self.planned.key)
        self.seen = self._settled(self.seen)
        action, reason = self._decide(self.seen)
        if action is Action.UNKNOWN and not self.can_reconcile:
            raise self._unknown(reason)
        if action is Action.SKIP and not self._resumable(self.seen):
            return self._skipped(reason, self.seen)
        return None

    def start(self, client: CMLClient) -> WindowOutcome | JobRun:
        """Claim the window and start, adopt or resume it; record what happened.

        Returns the outcome, or (with `follow`) the run to follow to its end.
        """
        record = self.seen
        for _ in range(CLAIM_ROUNDS):
            action, reason = self._decide(record)
            if self._resumable(record) and action is Action.SKIP:
                assert record is not None and record.engine_id is not None
                run = client.get_run(self.job, record.engine_id)
                self.log.info("Following %s's run %s again: %s", self.planned.label, run.id, reason)
                return run
            if action is Action.SKIP:
                return self._skipped(reason, record)
            if action is Action.UNKNOWN and not self.can_reconcile:
                raise self._unknown(reason)
            attempt = self._attempt_record(record, action)
            claim = self.records.claim(self.planned.key, record, attempt)
            if claim is None:  # another process got there first: look again
                record = self._settled(self.records.read(self.planned.key))
                continue
            with claim as held:
                return self._claimed(held, client, record, attempt, action, reason)
        raise CMLError(
            f"{self.planned.label}: its record kept changing under {CLAIM_ROUNDS} attempts to "
            "claim it; nothing was started",
            job_url=self.job.page_url,
        )

    def finish(self, status: WindowStatus, **fields: Any) -> None:
        """Record how a followed run ended (claiming the window's record for the write); the
        run's end stands even if the Prefect API will not take the write (`_unrecorded`)."""
        for _ in range(CLAIM_ROUNDS):
            current = self.records.read(self.planned.key)
            attempted_at = current.attempted_at if current else None
            final = self.record(status, attempted_at=attempted_at, **fields)
            try:
                claim = self.records.claim(self.planned.key, current, final)
            except CMLRecordError as error:  # a take-over writes the record as it claims
                self._unrecorded(final, error)
                return
            if claim is not None:
                with claim as held:
                    self._release(held, final)
                return

    def record(self, status: WindowStatus, **fields: Any) -> WindowRecord:
        """This window's record with `status` and `fields` (not held by anyone)."""
        return WindowRecord(
            key=self.planned.key,
            job_url=self.job.page_url,
            window_start=self.planned.window.start,
            window_end=self.planned.window.last_day,
            environment=self.planned.environment,
            status=status,
            **fields,
        )

    # --- under the claim -------------------------------------------------------------------

    def _claimed(
        self,
        held: RecordClaim,
        client: CMLClient,
        seen: WindowRecord | None,
        attempt: WindowRecord,
        action: Action,
        reason: str,
    ) -> WindowOutcome | JobRun:
        if action is Action.UNKNOWN:
            assert seen is not None
            found = self._reconcile(client, seen)
            if found is not None:
                return self._adopt(held, found, attempt, reason)
            return self._start(
                held, client, None, f"CML has no run of it: starting it safely ({reason})"
            )
        if seen is None and self.witness is not None and self.reprocess is not Reprocess.ALL:
            try:
                found = self.witness(self.planned.environment)
            except CMLError as error:  # nothing was started: a later attempt may start it
                held.release(
                    self.record(
                        WindowStatus.START_FAILED,
                        error=f"CML could not be asked for the window's run: {error}",
                        attempted_at=attempt.attempted_at,
                    )
                )
                raise
            if found is not None:
                return self._adopt(held, found, attempt, "CML has its run, without a record")
        return self._start(held, client, attempt.attempted_at, reason)

    def _attempt_record(self, seen: WindowRecord | None, action: Action) -> WindowRecord:
        """What the claim writes: `starting` now, or (resolving an unknown outcome) the record
        as it was, whose attempt time tells CML's runs apart."""
        if action is Action.UNKNOWN and seen is not None:
            return seen
        return self.record(WindowStatus.STARTING, attempted_at=datetime.now(UTC))

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
        self, held: RecordClaim, run: JobRun, attempt: WindowRecord, reason: str
    ) -> WindowOutcome | JobRun:
        self.log.warning(
            "%s: %s; CML has run %s with exactly this environment: adopting it",
            self.planned.label,
            reason,
            run.id,
        )
        held.release(
            self.record(
                WindowStatus.STARTED,
                engine_id=run.id,
                attempted_at=attempt.attempted_at,
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
            adopted=True,
        )

    def _start(
        self, held: RecordClaim, client: CMLClient, attempted_at: datetime | None, reason: str
    ) -> WindowOutcome | JobRun:
        """Record the intent (unless the claim wrote it at `attempted_at`), start, record the
        result (v2 when followed, else v1)."""
        job, planned = self.job, self.planned
        if attempted_at is None:
            attempted_at = datetime.now(UTC)
            held.write(self.record(WindowStatus.STARTING, attempted_at=attempted_at))
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
            self._release(
                held,
                self.record(
                    WindowStatus.OUTCOME_UNKNOWN, error=str(error), attempted_at=attempted_at
                ),
            )
            raise
        except CMLError as error:
            self._release(
                held,
                self.record(WindowStatus.START_FAILED, error=str(error), attempted_at=attempted_at),
            )
            raise
        run_url = f"{job.page_url}/runs/{run_id}"
        started = self.record(
            WindowStatus.STARTED, engine_id=run_id, attempted_at=attempted_at, run_url=run_url
        )
        if not self._release(held, started):
            reason = f"{reason}; its record was not updated"
        self.log.info(
            "Started %s for %s (%s): run %s, %s", job.slug, planned.label, reason, run_id, run_url
        )
        if run is not None:
            return run
        return WindowOutcome.of(
            job, planned, WindowResult.STARTED, engine_id=run_id, run_url=run_url, reason=reason
        )

    def _release(self, held: RecordClaim, record: WindowRecord) -> bool:
        """Write the settled record; False (`_unrecorded`) when the Prefect API will not."""
        try:
            held.release(record)
        except CMLRecordError as error:
            self._unrecorded(record, error)
            return False
        return True

    def _unrecorded(self, record: WindowRecord, error: CMLRecordError) -> None:
        """Warn that `record` could not be written. What happened in CML stands: the record
        keeps its previous status (`starting` until the claim's lease ends, or `started`),
        which a rerun resolves - adopting the run through API v2, or reporting it unknown
        (v1 only) - and never by starting the window blindly."""
        run = f" (run {record.engine_id})" if record.engine_id else ""
        self.log.warning(
            "%s: its record could not be set to %s%s: %s; it keeps its previous status, "
            "which a rerun resolves",
            self.planned.label,
            record.status.value,
            run,
            error,
        )

    # --- helpers ---------------------------------------------------------------------------

    def _settled(self, record: WindowRecord | None) -> WindowRecord | None:
        """The record once no other process holds the window: waits (logging why) while
        another one is starting it, at most until its lease ends - then its outcome is
        unknown, and resolved as such."""
        told = False
        while record is not None and record.held_by_another(self.records.holder, datetime.now(UTC)):
            if not told:
                self.log.info(
                    "%s: waiting for %s, which is starting it (its claim ends %s)",
                    self.planned.label,
                    record.holder,
                    f"{record.lease_until:%H:%M:%S} UTC",
                )
                told = True
            time.sleep(WAIT_POLL_SECONDS)
            record = self.records.read(self.planned.key)
        return record

    def _decide(self, record: WindowRecord | None) -> tuple[Action, str]:
        return decide_record(record, self.reprocess, retry_failed=self.retry_failed)

    def _resumable(self, record: WindowRecord | None) -> bool:
        """With follow, a window recorded `started` with a run id is followed to its end."""
        return (
            self.follow
            and record is not None
            and record.status is WindowStatus.STARTED
            and record.engine_id is not None
        )

    def _skipped(self, reason: str, seen: WindowRecord | None) -> WindowOutcome:
        """Skipped, with the run its record `seen` (as last read) names."""
        self.log.info("Skipping %s: %s", self.planned.label, reason)
        return WindowOutcome.skipped(self.job, self.planned, reason, seen)

    def _unknown(self, reason: str) -> CMLOutcomeUnknown:
        return CMLOutcomeUnknown(
            f"{self.planned.label}: not started, {reason} (or set CML_API_V2_KEY: the "
            "backfill then asks CML itself)",
            job_url=self.job.page_url,
        )


def new_holder(host: str, pid: int) -> str:
    """A holder id naming the machine and process (shown to people waiting for it)."""
    return f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
