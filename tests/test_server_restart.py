"""A Prefect server killed (SIGKILL) and started again in the middle of a backfill, on SQLite
and on PostgreSQL. With Prefect 3.9's default in-memory leases, the restarted server forgets
who holds the project's slots while its limit still counts them taken: the backfill gives
back what the server forgot and ends (it used to wait for good), and a rerun completes every
window, each started once. The emulator's record of runs is the judge."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    CML_JOBS,
    PrefectServer,
    cml_jobs_on,
    kill_prefect_server,
    machine_env,
    restart_prefect_server,
)

from cml_tasks.emulator import Emulator, Fault, default_config

LIMIT = "cml-project:bob:bob-sandbox"
"""A project no other test's backfill uses: its limit starts from nothing here."""
TWO_YEARS = ["--from", "2015-01-01", "--to", "2016-12-31", "--every", "month"]


@pytest.fixture(params=["postgresql", "sqlite"])
def server(request: pytest.FixtureRequest) -> Iterator[PrefectServer]:
    name = "prefect_server_pg" if request.param == "postgresql" else "prefect_server"
    found: PrefectServer = request.getfixturevalue(name)
    yield found
    httpx.delete(f"{found.api_url}/v2/concurrency_limits/{LIMIT}", timeout=30)


def _bob() -> dict[str, str]:
    """bob's keys: bob-sandbox is his project."""
    bob = next(user for user in default_config().users if user.username == "bob")
    return {"CML_API_KEY": bob.v1_key, "CML_API_V2_KEY": bob.v2_key}


def _wait_for_runs(cml: Emulator, count: int) -> None:
    deadline = time.monotonic() + 90
    while len(cml.runs()) < count:
        assert time.monotonic() < deadline, f"only {len(cml.runs())} runs after 90 s"
        time.sleep(0.1)


def test_item_1_a_backfill_outlives_a_prefect_server_restart_and_a_rerun_completes_it(
    server: PrefectServer, tmp_path: Path
) -> None:
    with Emulator() as cml:
        cml.inject(Fault(endpoint="v1.start", kind="latency", seconds=2.0))  # windows left
        url = cml.job_url("bob", "bob-sandbox", "301")
        args = ["backfill", url, *TWO_YEARS, "--max-concurrency", "4", "--json"]
        first = subprocess.Popen(
            [CML_JOBS, *args],
            env=machine_env(server, tmp_path, "a", **_bob()),
            cwd=tmp_path / "a" / "work",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_runs(cml, 4)  # its four lanes hold all four of the limit's slots
            kill_prefect_server(server)
            time.sleep(2)
            restart_prefect_server(server)
            out, err = first.communicate(timeout=150)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        # windows whose claim the kill cut short may be outcome unknown (exit 7); never hung
        assert first.returncode in (0, 7), f"exit {first.returncode}:\n{out}\n{err[-4000:]}"
        # What it said about slots, leases and the API: the forgotten leases are given back
        # by whichever of its windows or its renewer meets them first.
        said = "\n".join(
            line
            for line in err.splitlines()
            if re.search("slot|lease|unreachable|Backfill of", line)
        )
        report = json.loads(out.strip().splitlines()[-1])
        assert len(report["outcomes"]) == 24

        # The restarted server counted four slots taken that nobody held: a rerun would wait
        # for good, and the count would stay, unless the backfill gave them back.
        rerun = cml_jobs_on(server, tmp_path, "b", *args, timeout=120, **_bob())
        assert rerun.returncode == 0, f"{said}\n{rerun.stdout}{rerun.stderr[-4000:]}"
        starts = Counter(run["environment"]["START_DATE"] for run in cml.runs())
        assert starts == Counter(
            {f"{year}-{month:02d}-01": 1 for year in (2015, 2016) for month in range(1, 13)}
        )

    limit = httpx.get(f"{server.api_url}/v2/concurrency_limits/{LIMIT}", timeout=30).json()
    assert limit["active_slots"] == 0, f"{limit}\n{said}"
