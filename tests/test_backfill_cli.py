"""`cml-jobs backfill`: dry run without Prefect, real runs on the emulator, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault


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
