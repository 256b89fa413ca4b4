"""A backfill at the scale a user meets: `cml-jobs backfill` of 1,000 daily windows with faults,
on the session's PostgreSQL Prefect server (about two minutes)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import httpx
from conftest import PrefectServer, cml_jobs_on

from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault

FIRST = date(2012, 1, 1)
LAST = FIRST + timedelta(days=999)
FAULTS = (
    Fault(endpoint="v1.start", kind="answer", status=400, body="bad", calls=(100, 500, 900)),
    Fault(endpoint="v1.start", kind="lost_answer", calls=(700,)),
    Fault(endpoint="v1.start", kind="503", rate=0.02, seed=3),
)
"""Three starts rejected, one answer lost (v1 only: its outcome unknown), and 503 now and then
(sent again)."""


def test_a_thousand_window_backfill_with_faults_reports_its_failures_first(
    prefect_server_pg: PrefectServer, tmp_path: Path
) -> None:
    """The report artifact of 1,000 daily windows names exactly the four that did not start,
    with short reasons and what to run next, before its table of every window. On PostgreSQL:
    a SQLite server records about 2 windows a second here, PostgreSQL about 9."""
    with Emulator() as emu:
        for fault in FAULTS:
            emu.inject(fault)
        url = emu.job_url("alice", "risk-analysis", "208")
        args = ["--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--every", "day"]
        done = cml_jobs_on(
            prefect_server_pg,
            tmp_path,
            "laptop",
            *["backfill", url, *args, "--max-concurrency", "8", "--json"],
            timeout=600,
            CML_API_KEY=DEFAULT_V1_KEY,
        )
    assert done.returncode != 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout)["outcomes"]
    assert len(outcomes) == 1000, done.stderr[-3000:]
    failed = [o["window"] for o in outcomes if o["result"] != "started"]
    assert Counter(o["result"] for o in outcomes if o["result"] != "started") == Counter(
        {"start_failed": 3, "outcome_unknown": 1}
    ), failed

    key = f"cml-backfill-risk-analysis-208-{FIRST}-{LAST}"
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    with httpx.Client(base_url=prefect_server_pg.api_url, timeout=30) as http:
        [artifact] = http.post("/artifacts/filter", json=body).raise_for_status().json()
    lines = artifact["data"].splitlines()
    assert lines[0].startswith("### Backfill of risk-analysis/208: 1000 windows: "), lines[:3]
    listed = lines.index("**Failed or unknown**:")
    table = next(i for i, line in enumerate(lines) if line.startswith("| window |"))
    shown = [line for line in lines[listed:table] if line.startswith("- ")]
    assert [line.split(":")[0].removeprefix("- ") for line in shown] == failed
    assert all(len(line) < 400 for line in shown), shown  # short reasons
    assert "--reprocess failed" in "\n".join(lines[listed:table])
    assert len([line for line in lines[table + 2 :] if line.startswith("| ")]) == 1000
