"""`cml-jobs backfill`: dry run without Prefect, real runs on the emulator, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from subprocess import CompletedProcess

import httpx
import pytest
from conftest import PrefectServer, cml_jobs_on
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault

Completed = CompletedProcess[str]


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    with Emulator() as cml:
        yield cml


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["backfill", *args])
    return result.exit_code, result.stdout


def test_dry_run_is_fast_and_needs_no_prefect() -> None:
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from cml_tasks.cli import app\n"
        "r = CliRunner().invoke(app, ['backfill', 'https://cml.example.com/alice/p/jobs/1',"
        " '--from', '2017-01-01', '--to', '2019-12-31', '--dry-run', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(len(json.loads(r.stdout)['outcomes']))\n"
        "assert not any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "36"


def test_dry_run_table_and_bad_input() -> None:
    url = "https://cml.example.com/alice/p/jobs/1"
    code, out = _invoke(url, "--from", "2017-01-01", "--to", "2017-03-31", "--dry-run")
    assert code == 0
    assert "2017-02" in out and "END_DATE=2017-02-28" in out and "3 windows: 3 planned" in out
    code, _ = _invoke(url, "--from", "2017-13-01", "--to", "2017-03-31", "--dry-run")
    assert code == ExitCode.BAD_INPUT
    code, _ = _invoke(url, "--from", "2017-01-01", "--to", "2017-03-31", "--every", "often")
    assert code == ExitCode.BAD_INPUT


@pytest.mark.usefixtures("prefect_api")
def test_backfill_then_resume_with_json(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    code, out = _invoke(url, "--from", "2017-01-01", "--to", "2017-03-31", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [o["result"] for o in report["outcomes"]] == ["started"] * 3
    code, out = _invoke(
        url, "--from", "2017-01-01", "--to", "2017-04-30", "--newest-first", "--json"
    )
    assert code == 0, out
    report = json.loads(out)
    assert [(o["window"], o["result"]) for o in report["outcomes"]] == [
        ("2017-04", "started"),
        ("2017-03", "skipped"),
        ("2017-02", "skipped"),
        ("2017-01", "skipped"),
    ]
    starts = Counter(run["environment"]["START_DATE"] for run in emu.runs())
    assert starts == Counter({f"2017-0{m}-01": 1 for m in range(1, 5)})


@pytest.mark.usefixtures("prefect_api")
def test_outcome_unknown_exit_code_and_table(emu: Emulator) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="502", calls=(2,)))
    url = emu.job_url("alice", "risk-analysis", "208")
    result = CliRunner().invoke(
        app,
        ["backfill", url, "--from", "2017-01-01", "--to", "2017-03-31", "--max-concurrency", "1"],
    )
    assert result.exit_code == ExitCode.OUTCOME_UNKNOWN, result.output
    assert "outcome unknown" in result.stdout
    assert "2017-02: outcome unknown" in result.stderr
    assert len(emu.runs()) == 2


def _backfill_on(server: PrefectServer, tmp_path: Path, url: str, *args: str) -> Completed:
    """`cml-jobs backfill` as a user runs it, on a machine of its own talking to `server`."""
    return cml_jobs_on(
        server, tmp_path, "laptop", "backfill", url, *args, CML_API_KEY=DEFAULT_V1_KEY
    )


def _flow_runs(server: PrefectServer) -> int:
    with httpx.Client(base_url=server.api_url) as http:
        count: int = http.post("/flow_runs/count", json={}).raise_for_status().json()
    return count


def test_a_rerun_with_nothing_to_start_asks_only_the_records(
    prefect_server: PrefectServer, emu: Emulator, tmp_path: Path
) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    first = _backfill_on(
        prefect_server, tmp_path, url, "--from", "2017-01-01", "--to", "2017-03-31"
    )
    assert first.returncode == 0, first.stderr
    flow_runs, requests = _flow_runs(prefect_server), len(emu.requests())

    rerun = _backfill_on(
        prefect_server, tmp_path, url, "--from", "2017-01-01", "--to", "2017-03-31"
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "3 windows: 3 skipped" in rerun.stdout
    assert "2017-02" in rerun.stdout and "engine" in rerun.stdout  # each row says why
    assert f"Nothing to start: every window's record on {prefect_server.api_url}" in rerun.stderr
    assert (_flow_runs(prefect_server), len(emu.requests())) == (flow_runs, requests)

    wider = _backfill_on(
        prefect_server, tmp_path, url, "--from", "2017-01-01", "--to", "2017-04-30"
    )
    assert wider.returncode == 0, wider.stderr
    assert "4 windows: 3 skipped, 1 started" in wider.stdout
    assert "Nothing to start" not in wider.stderr
    assert _flow_runs(prefect_server) == flow_runs + 1
    assert Counter(run["environment"]["START_DATE"] for run in emu.runs()) == Counter(
        {f"2017-0{m}-01": 1 for m in range(1, 5)}
    )


@pytest.mark.usefixtures("prefect_api")
def test_the_project_limit_is_sized_to_max_concurrency_or_its_cap_is_said(
    emu: Emulator,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    name = "cml-project:alice:risk-analysis"
    url = emu.job_url("alice", "risk-analysis", "208")
    with get_client(sync_client=True) as client:
        with suppress(ObjectNotFound):
            client.delete_global_concurrency_limit_by_name(name)
        try:
            result = CliRunner().invoke(
                app,
                [
                    "backfill",
                    url,
                    "--from",
                    "2017-01-01",
                    "--to",
                    "2017-02-28",
                    "--max-concurrency",
                    "6",
                ],
            )
            assert result.exit_code == 0, result.output
            assert client.read_global_concurrency_limit_by_name(name).limit == 6
            assert "Note:" not in result.stdout

            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=2))
            result = CliRunner().invoke(
                app,
                [
                    "backfill",
                    url,
                    "--from",
                    "2017-03-01",
                    "--to",
                    "2017-04-30",
                    "--max-concurrency",
                    "4",
                    "--json",
                ],
            )
            assert result.exit_code == 0, result.output
            said = f"The project limit {name} has 2 slots, fewer than max_concurrency=4"
            assert f"Note: {said}" in result.stderr  # on the terminal as it starts
            assert any(said in note for note in json.loads(result.stdout)["notes"])
            result = CliRunner().invoke(
                app,
                [
                    "backfill",
                    url,
                    "--from",
                    "2017-05-01",
                    "--to",
                    "2017-05-31",
                    "--max-concurrency",
                    "4",
                ],
            )
            assert result.exit_code == 0, result.output
            assert f"Note: {said}" in result.stdout  # under the summary
            assert client.read_global_concurrency_limit_by_name(name).limit == 2  # kept
        finally:
            client.delete_global_concurrency_limit_by_name(name)
