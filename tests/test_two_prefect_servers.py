"""Two teams, each with its own Prefect server, backfill the same months of one CML job at the
same moment (issue 19 item 2). Neither server sees the other's records, and each lists CML's
runs before its first start, so both start the months: CML then holds two runs of a month.
A backfill whose start was second always sees both runs when it asks CML again after its
last start, and reports the month `duplicate`, with both run ids, and exits 1; a plain
`started` is never a month that CML shows twice to that backfill."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import PrefectServer, cml_jobs_on

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault

BACKFILL = ["backfill", "--from", "2017-01-01", "--to", "2017-12-31"]


def test_two_prefect_servers_at_once_name_every_duplicate_with_both_runs(
    prefect_server: PrefectServer, prefect_server_pg: PrefectServer, tmp_path: Path
) -> None:
    with Emulator() as cml:
        # Each start takes 0.3 s in CML, so that both backfills have starts in flight at once.
        cml.inject(Fault(endpoint="v2.create_run", kind="latency", seconds=0.3))
        job = cml.job_url("alice", "risk-analysis", "208")
        keys = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}

        def backfill(team: str, server: PrefectServer) -> subprocess.CompletedProcess[str]:
            args = [*BACKFILL, job, "--max-concurrency", "2", "--json"]
            return cml_jobs_on(server, tmp_path, team, *args, **keys)

        with ThreadPoolExecutor(2) as pool:
            done = list(
                pool.map(backfill, ["team-a", "team-b"], [prefect_server, prefect_server_pg])
            )
        runs_of: dict[str, set[str]] = defaultdict(set)
        for run in cml.runs():
            runs_of[run["environment"]["START_DATE"][:7]].add(run["id"])

    twice = {month for month, ids in runs_of.items() if len(ids) == 2}
    assert twice, f"no month started twice: the race did not happen ({dict(runs_of)})"
    assert all(len(ids) <= 2 for ids in runs_of.values()), runs_of
    named: dict[str, set[str]] = defaultdict(set)
    for finished in done:
        assert finished.returncode in (0, 1), finished.stderr[-3000:]
        outcomes = json.loads(finished.stdout)["outcomes"]
        duplicates = [o for o in outcomes if o["result"] == "duplicate"]
        assert finished.returncode == (1 if duplicates else 0), finished.stderr[-3000:]
        for outcome in outcomes:
            month = outcome["window"]
            if outcome["result"] == "duplicate":
                both = {outcome["engine_id"], *outcome["duplicates"]}
                assert both == runs_of[month], (month, outcome)
                assert all(run_id in outcome["reason"] for run_id in outcome["duplicates"])
                named[month] |= both
            elif outcome["result"] in ("started", "skipped"):
                assert month not in twice or outcome["result"] == "started", outcome
    assert set(named) == twice, f"duplicates not named: {sorted(twice - set(named))}"
