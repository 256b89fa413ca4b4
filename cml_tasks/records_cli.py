"""The work of `cml-jobs records`: list a job's window records on the Prefect server, or
forget one (it becomes "not started"), for a person to read and mend them."""

from __future__ import annotations

import json
from datetime import date

import typer

from cml_tasks._text import columns, printable
from cml_tasks.backfill import WindowRecord
from cml_tasks.job import JobRef


def load(job: JobRef, start: date | None, end: date | None) -> tuple[list[WindowRecord], bool]:
    """The job's records overlapping `[start, end]`, oldest window first, and whether other
    machines share them (False on an ephemeral Prefect API)."""
    from cml_tasks.prefect.records import window_records

    records = window_records()
    found = [
        record
        for record in records.records(job).values()
        if (start is None or record.window_end >= start)
        and (end is None or record.window_start <= end)
    ]
    return sorted(found, key=lambda record: record.window_start), records.shared_api


def label(record: WindowRecord) -> str:
    return record.window.label


def show(records: list[WindowRecord], job: JobRef, *, as_json: bool) -> None:
    if as_json:
        payload = [{"window": label(r), **r.model_dump(mode="json")} for r in records]
        typer.echo(json.dumps(payload, ensure_ascii=True))
        return
    rows = []
    for r in records:
        attempted = f"{r.attempted_at:%Y-%m-%d %H:%M:%S}" if r.attempted_at else ""
        held = f"{r.holder} until {r.lease_until:%H:%M:%S}" if r.holder and r.lease_until else ""
        state = r.status.replace("_", " ") + (f" ({r.run_status})" if r.run_status else "")
        rows.append([label(r), state, r.engine_id or "", attempted, held])
    typer.echo(f"Window records of {printable(job.page_url)}")
    header = ["window", "state", "engine / run id", "attempted (UTC)", "held by"]
    typer.echo(columns(header, rows))
    typer.echo(f"{len(records)} windows with a record")


def span(record: WindowRecord) -> str:
    """`FIRST..LAST` (inclusive): names one record even when labels and start dates clash."""
    return f"{record.window_start.isoformat()}..{record.window_end.isoformat()}"


def pick(records: list[WindowRecord], window: str, job: JobRef) -> WindowRecord:
    """The one record `window` names (its label, first day, or `FIRST..LAST`); a
    `LookupError` when none does, or when several do (a monthly and a daily record both
    starting 2018-01-01): deleting a guess would lose a record the user meant to keep."""
    matches = [r for r in records if window in (label(r), r.window_start.isoformat(), span(r))]
    if not matches:
        raise LookupError(f"no record of window {window!r} for {job.slug}: see `cml-jobs records`")
    if len(matches) > 1:
        listed = ", ".join(f"{span(r)} ({label(r)})" for r in matches)
        raise LookupError(
            f"window {window!r} names {len(matches)} records of {job.slug}: {listed}; "
            "give the one to forget as FIRST..LAST"
        )
    return matches[0]


def forget(job: JobRef, window: str, *, yes: bool) -> None:
    """Delete the record of the window labelled `window` (as `records` shows it), after
    asking; the next backfill or scheduled run starts that window again."""
    from cml_tasks.prefect.records import window_records

    record = pick(load(job, None, None)[0], window, job)
    what = f"window {label(record)} of {job.slug} ({record.status.replace('_', ' ')}"
    what += f", run {record.engine_id})" if record.engine_id else ")"
    if not yes and not typer.confirm(
        f"Forget {printable(what)}? The next backfill or scheduled run starts it again"
    ):
        raise typer.Exit(1)
    window_records().forget(record.key)
    typer.echo(f"Forgot {printable(what)}: it counts as not started now")
