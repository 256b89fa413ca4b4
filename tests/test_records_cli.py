"""`cml-jobs records`: a person reads a job's window records and forgets one, on a real
`prefect server start`; and is told when the records are not shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PrefectServer, machine_env

from cml_tasks.backfill import WindowRecord, WindowStatus
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def _cml_jobs(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CML_JOBS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_records_are_listed_and_a_window_forgotten_after_asking(
    prefect_server: PrefectServer, cml: Emulator, tmp_path: Path
) -> None:
    url = cml.job_url("alice", "risk-analysis", "208")
    env = machine_env(prefect_server, tmp_path, "laptop", CML_API_KEY=DEFAULT_V1_KEY)
    span = ["--from", "2017-01-01", "--to", "2017-03-31"]
    assert _cml_jobs(env, "backfill", url, *span, "--json").returncode == 0

    listed = _cml_jobs(env, "records", url, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["window"], r["status"]) for r in rows] == [
        ("2017-01", "started"),
        ("2017-02", "started"),
        ("2017-03", "started"),
    ]
    assert sorted(r["engine_id"] for r in rows) == sorted(run["id"] for run in cml.runs())
    assert all(r["attempted_at"] for r in rows)
    table = _cml_jobs(env, "records", url, "--from", "2017-02-01", "--to", "2017-02-28")
    assert "2017-02" in table.stdout and "2017-01" not in table.stdout
    assert "1 windows with a record" in table.stdout

    declined = _cml_jobs(env, "records", url, "--forget", "2017-02", stdin="n\n")
    assert declined.returncode == 1
    assert "Forget window 2017-02 of risk-analysis/208 (started, run" in declined.stdout
    assert len(json.loads(_cml_jobs(env, "records", url, "--json").stdout)) == 3

    forgot = _cml_jobs(env, "records", url, "--forget", "2017-02", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    assert "not started now" in forgot.stdout
    again = json.loads(_cml_jobs(env, "backfill", url, *span, "--json").stdout)
    assert [o["result"] for o in again["outcomes"]] == ["skipped", "started", "skipped"]
    assert len(cml.runs()) == 4

    missing = _cml_jobs(env, "records", url, "--forget", "2016-12", "--yes")
    assert missing.returncode == 2
    assert "no record of window '2016-12'" in missing.stderr


@pytest.mark.server  # an ephemeral Prefect server in the CLI's process
def test_records_on_an_ephemeral_api_say_they_are_not_shared(cml: Emulator, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CML_"))}
    env |= {"PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # On a loaded test machine the ephemeral server may take longer than Prefect's 20 s.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
    listed = _cml_jobs(env, "records", cml.job_url("alice", "risk-analysis", "208"))
    assert listed.returncode == 0, listed.stderr
    assert "ephemeral Prefect API; other machines cannot see them" in listed.stderr


def _record(first: str, end: str, status: str = "started") -> WindowRecord:
    from datetime import date

    return WindowRecord(
        key=f"k-{first}-{end}",
        job_url="https://cml.example.com/alice/risk-analysis/jobs/208",
        window_start=date.fromisoformat(first),
        window_end=date.fromisoformat(end),
        environment={},
        status=WindowStatus(status),
    )


def test_item_16_forget_a_start_date_two_records_share_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue item 16: a monthly and a daily record both start 2018-01-01; `--forget
    2018-01-01 --yes` was a ValueError traceback. It is bad input (exit 2) listing both, and
    each one can still be named as FIRST..LAST; nothing is deleted on a guess."""
    from typer.testing import CliRunner

    from cml_tasks import records_cli
    from cml_tasks.cli import app

    both = [_record("2018-01-01", "2018-01-31"), _record("2018-01-01", "2018-01-01")]
    monkeypatch.setattr(records_cli, "load", lambda job, start, end: (both, True))
    url = "https://cml.example.com/alice/risk-analysis/jobs/208"
    result = CliRunner().invoke(
        app, ["records", url, "--forget", "2018-01-01", "--yes"], env={"CML_HOST": None}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        "window '2018-01-01' names 2 records of risk-analysis/208: "
        "2018-01-01..2018-01-31 (2018-01), 2018-01-01..2018-01-01 (2018-01-01); "
        "give the one to forget as FIRST..LAST"
    ) in result.output
    job = records_cli.JobRef.parse(url)
    assert records_cli.pick(both, "2018-01-01..2018-01-01", job) is both[1]
    assert records_cli.pick(both, "2018-01", job) is both[0]
