"""Window records on the Prefect server: per (job, window), one variable with its state.

Every process that talks to the same Prefect API - a laptop's backfill, a worker's scheduled
run, a flow run retried in a fresh container - reads and claims the same records, with
nothing set beyond `PREFECT_API_URL`; the server's database (PostgreSQL or SQLite) is the one
truth. A variable's name is unique in that database, so creating it is the claim of a window
that has no record: of two processes, exactly one succeeds. Taking over a window that has a
record (a failed start, an unknown outcome, a deliberate re-run) creates a claim variable
`cml-claim-<window>-a<N>` for the record's next attempt number first, so two takers never
both win either; it is deleted when the take-over ends. A claim carries a lease (45 s,
`CML_CLAIM_LEASE_SECONDS`), renewed every third of it while held: if its holder dies, the
window is free for others once it ends.

A claim's outcome (started, start failed, unknown, a followed run's end) is written over the
record, so a settled window is one variable. On SQLite, Prefect's variable update reads before
it writes, and a write committed in between makes it fail at once ("database is locked",
503): such a write is sent again here at once and again, never once the lease may have ended.

The records are visible on the Prefect UI's Variables page (`record_layout`), tagged `cml`
and `cml-job:<project>/<job id>`; `cml-jobs records` lists and forgets them.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from cml_tasks._shared import shared
from cml_tasks.backfill import LEGACY_KEY_PREFIX, WindowRecord, job_tag, legacy_key_of
from cml_tasks.errors import CMLConfigError, CMLOutcomeUnknown, CMLRecordError
from cml_tasks.job import JobRef
from cml_tasks.prefect._adapter import filter_variables, without_client_retries
from cml_tasks.prefect.api import api_is_shared, prefect_api
from cml_tasks.record_layout import (
    PAGE_SIZE,
    claim_name,
    is_legacy,
    legacy_record,
    listed_records,
    named_like,
    tagged,
)
from cml_tasks.window_start import new_holder

NOT_SHARED = (
    "No PREFECT_API_URL: the window records are kept by this machine's own ephemeral Prefect "
    "API; other machines cannot see them, and may start these windows again"
)
"""Said in the log and the artifact when the records cannot be shared."""
LEASE_SETTING = "CML_CLAIM_LEASE_SECONDS"
"""The environment variable that sets a claim's lease (every machine sharing a server should
agree on it; tests shorten it so that a killed process's windows come free sooner)."""
DEFAULT_LEASE_SECONDS = 45.0
"""How long a claim lasts unless renewed: a dead holder's window is free after this."""
LEASE_RANGE = (3.0, 3600.0)
"""The lease a setting may choose, in seconds."""
_RESEND_PAUSES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, *(1.6,) * 40)
"""Pauses before a busy or lost record write is sent again (bounded by the claim's lease)."""
_BUSY = {429, 503}
"""Answers that say "not now": SQLite's "database is locked" is a 503."""
MAX_ERROR_CHARS = 1000
"""A record's error is cut to this length (a variable holds at most 5,000 characters)."""


def lease_seconds() -> float:
    """A claim's lease: `CML_CLAIM_LEASE_SECONDS`, or 45 s. It is renewed every third of it,
    and its holder stops writing a ninth of it before its end (5 s of 45: the clocks of two
    machines may differ that much)."""
    text = os.environ.get(LEASE_SETTING, "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    low, high = LEASE_RANGE
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not low <= seconds <= high:
        raise CMLConfigError(
            f"Invalid {LEASE_SETTING} {text[:40]!r}: use a number of seconds from {low:g} to "
            f"{high:g} (default {DEFAULT_LEASE_SECONDS:g})"
        )
    return seconds


class ServerRecords:
    """`WindowRecords` as Prefect Variables on the Prefect server (per window, one record)."""

    def __init__(self, client: SyncPrefectClient, holder: str, *, shared_api: bool) -> None:
        self.client = client
        self.holder = holder
        self.shared_api = shared_api
        """False when the API is an ephemeral one of this process's machine (no
        `PREFECT_API_URL`): other machines cannot see these records."""
        self._any_legacy: bool | None = None

    def read(self, key: str) -> WindowRecord | None:
        """The window's record (one read), else its record from before, if any."""
        variable = self.client.read_variable_by_name(key)
        if variable is not None:
            return WindowRecord.model_validate(variable.value)
        return self._legacy(key)

    def claim(self, key: str, seen: WindowRecord | None, record: WindowRecord) -> _Claim | None:
        if seen is None:
            stamped = self._stamped(record, attempt=0)
            try:
                self.client.create_variable(
                    VariableCreate(name=key, value=_value(stamped), tags=_tags(record))
                )
            except ObjectAlreadyExists:
                if not self._wrote(key, stamped):
                    return None
            return _Claim(self, key, stamped, takeover=None, legacy=None)
        return self._take_over(key, seen, record)

    def records(self, job: JobRef) -> dict[str, WindowRecord]:
        """Every record of `job`, each as `read` gives it, by key (`record_layout.find` looks
        one up)."""
        return listed_records(
            job,
            lambda tag, offset, limit: filter_variables(
                self.client, tagged(tag), offset=offset, limit=limit
            ),
        )

    def forget(self, key: str) -> bool:
        """Delete a window's record (it becomes "not started"); False if it had none. A
        record from before goes outcomes first: a forget cut short leaves it telling an older
        story (at worst a start whose outcome is unknown), never a newer one."""
        if not is_legacy(key):
            if self.client.read_variable_by_name(key) is None:
                return False
            self._drop(key)
            return True
        names = self._legacy_names(key)
        if not names:
            return False
        for name in sorted(names, key=lambda name: name == key):  # the record last
            self._drop(name)
        return True

    def _legacy(self, key: str) -> WindowRecord | None:
        """The record from before of the window `key` names: none once the server has none
        (asked once per process)."""
        if self._any_legacy is None:
            self._any_legacy = bool(self._listed(named_like(LEGACY_KEY_PREFIX), limit=1))
        if not self._any_legacy:
            return None
        start = legacy_key_of(key)
        return legacy_record(
            v
            for v in self._listed(named_like(start))
            if v["name"].startswith(start) and is_legacy(v["name"])
        )

    def _legacy_names(self, key: str) -> list[str]:
        found = self._listed(named_like(key))
        return [v["name"] for v in found if v["name"].startswith(key) and is_legacy(v["name"])]

    def _listed(self, body: dict[str, Any], limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        return filter_variables(self.client, body, offset=0, limit=limit)

    def _take_over(self, key: str, seen: WindowRecord, record: WindowRecord) -> _Claim | None:
        """Claim the record's next attempt, then check the record is still `seen`."""
        attempt = seen.attempt + 1
        while True:
            name = claim_name(key, attempt)
            try:
                self.client.create_variable(
                    VariableCreate(
                        name=name, value=_value(self._stamped(record, attempt)), tags=["cml"]
                    )
                )
            except ObjectAlreadyExists:
                other = self.client.read_variable_by_name(name)
                if other is None:  # released meanwhile: try the same attempt again
                    continue
                claimed = WindowRecord.model_validate(other.value)
                if claimed.holder != self.holder:
                    if claimed.held_by_another(self.holder, _now()):
                        return None
                    attempt += 1  # its holder died between claiming and writing the record
                    continue
            current = self.read(key)
            if current is None or (current.attempt, current.updated_at) != (
                seen.attempt,
                seen.updated_at,
            ):
                self._drop(name)
                return None
            stamped = self._stamped(record, attempt)
            legacy = current.key if current.key != key else None
            try:
                if legacy is None:
                    self._put(key, stamped, stamped)
                else:  # a record from before: the readable one takes its place
                    self.client.create_variable(
                        VariableCreate(name=key, value=_value(stamped), tags=_tags(record))
                    )
            except ObjectAlreadyExists:
                self._drop(name)
                return None
            except CMLRecordError:
                self._drop(name)  # no claim is left behind for a write that never landed
                raise
            except httpx.HTTPError as error:
                self._drop(name)
                raise CMLRecordError(f"could not write window record {key}: {error}") from error
            return _Claim(self, key, stamped, takeover=name, legacy=legacy)

    def _wrote(self, key: str, stamped: WindowRecord) -> bool:
        """Whether a create that answered "exists" was our own: the client resends a create
        whose answer was lost, and the resend finds what the first one made."""
        current = self.read(key)
        return (
            current is not None
            and current.holder == stamped.holder
            and current.lease_until == stamped.lease_until
        )

    def _stamped(self, record: WindowRecord, attempt: int) -> WindowRecord:
        return record.model_copy(
            update={
                "holder": self.holder,
                "lease_until": _now() + timedelta(seconds=lease_seconds()),
                "attempt": attempt,
                "updated_at": _now(),
            }
        )

    def _put(self, key: str, record: WindowRecord, held: WindowRecord) -> None:
        """Write the window's record while the claim `held` lasts: an answer that says the
        server is busy (SQLite's "database is locked"), or a lost one, is sent again at once
        and then after short pauses, until a ninth of the lease before its end; then, or on
        any other refusal, `CMLRecordError`."""
        assert held.lease_until is not None
        stop = held.lease_until - timedelta(seconds=lease_seconds() / 9)
        update = VariableUpdate(name=key, value=_value(record))
        for pause in _RESEND_PAUSES:
            try:
                with without_client_retries():
                    self.client.update_variable(update)
                return
            except httpx.HTTPStatusError as error:
                if error.response.status_code not in _BUSY:
                    raise CMLRecordError(
                        f"could not write window record {key} on the Prefect server: {error}"
                    ) from error
                problem: Exception = error
            except httpx.TransportError as error:
                problem = error
            if _now() + timedelta(seconds=pause) >= stop:
                break
            time.sleep(pause)
        raise CMLRecordError(
            f"could not write window record {key} on the Prefect server before its claim's "
            f"lease ended: {problem}"
        )

    def _drop(self, name: str) -> None:
        with suppress(ObjectNotFound):
            self.client.delete_variable_by_name(name)


class _Claim:
    """A held window: writes only while its lease runs; renews it in the background."""

    def __init__(
        self,
        records: ServerRecords,
        key: str,
        record: WindowRecord,
        takeover: str | None,
        legacy: str | None,
    ) -> None:
        self._records, self._key, self._record, self._takeover = records, key, record, takeover
        self._legacy = legacy
        """The key of the record from before that this one replaces (dropped once settled)."""
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._renewer = threading.Thread(target=self._renew, daemon=True)

    def __enter__(self) -> _Claim:
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._renewer.join()
        if self._takeover is not None:
            self._records._drop(self._takeover)

    def write(self, record: WindowRecord) -> None:
        with self._lock:
            self._check_lease()
            stamped = self._records._stamped(record, self._record.attempt)
            self._records._put(self._key, stamped, self._record)
            self._record = stamped

    def release(self, record: WindowRecord) -> None:
        with self._lock:
            self._check_lease()
            settled = record.model_copy(
                update={"attempt": self._record.attempt, "updated_at": _now()}
            )
            self._records._put(self._key, settled, self._record)
            self._done.set()
        if self._legacy is not None:
            with suppress(httpx.HTTPError):  # still read as before until it goes
                self._records.forget(self._legacy)

    def _check_lease(self) -> None:
        """Never write once the lease may have ended: another process may own the window."""
        assert self._record.lease_until is not None
        if _now() > self._record.lease_until - timedelta(seconds=lease_seconds() / 9):
            raise CMLOutcomeUnknown(
                f"lost the claim on window record {self._key} (its lease ended before this "
                "process could record the start's outcome): another process resolves it"
            )

    def _renew(self) -> None:
        while not self._done.wait(lease_seconds() / 3):
            with self._lock:
                if self._done.is_set():
                    return
                self._check_lease()
                stamped = self._records._stamped(self._record, self._record.attempt)
                self._records._put(self._key, stamped, self._record)
                self._record = stamped


def _tags(record: WindowRecord) -> list[str]:
    """A window's variables are tagged `cml` and with its job (`job_tag`): listed per job."""
    return ["cml", job_tag(JobRef.parse(record.job_url))]


def _value(record: WindowRecord) -> dict[str, Any]:
    if record.error is not None and len(record.error) > MAX_ERROR_CHARS:
        record = record.model_copy(update={"error": record.error[:MAX_ERROR_CHARS] + "..."})
    value: dict[str, Any] = record.model_dump(mode="json")
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def window_records() -> ServerRecords:
    """The records of the current Prefect API, through the process's one client."""
    return _records(prefect_api())


@shared
def _records(client: SyncPrefectClient) -> ServerRecords:
    lease_seconds()  # a bad setting is said before any window is claimed
    holder = new_holder(socket.gethostname(), os.getpid())
    return ServerRecords(client, holder, shared_api=api_is_shared())
