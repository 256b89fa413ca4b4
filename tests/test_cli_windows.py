"""`cml-jobs windows`: the windows in a range and what each run would be sent; fast, no Prefect."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app

runner = CliRunner()


def test_a_year_of_months() -> None:
    result = runner.invoke(app, ["windows", "--from", "2017-01-01", "--to", "2017-12-31"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "12 windows, every month (UTC), end inclusive:"
    assert lines[1].split() == ["2017-01", "START_DATE=2017-01-01", "END_DATE=2017-01-31"]
    assert lines[2].split() == ["2017-02", "START_DATE=2017-02-01", "END_DATE=2017-02-28"]
    assert lines[12].split() == ["2017-12", "START_DATE=2017-12-01", "END_DATE=2017-12-31"]


def test_json_with_every_option() -> None:
    result = runner.invoke(
        app,
        [
            "windows",
            "--from=2017-01-01",
            "--to=2017-01-20",
            "--every=week",
            "--week-start=sunday",
            "--timezone=Europe/Berlin",
            "--start-var=FROM",
            "--end-var=UNTIL",
            "--date-format=%Y%m%d",
            "--exclusive-end",
            "--set",
            "MODE=full",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["first_day"] for row in rows] == ["2017-01-01", "2017-01-08", "2017-01-15"]
    assert rows[0] == {
        "window": "2017-01-01..2017-01-07",
        "first_day": "2017-01-01",
        "last_day": "2017-01-07",
        "environment": {"FROM": "20170101", "UNTIL": "20170108", "MODE": "full"},
    }


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--from", "2017-01-31", "--to", "2017-01-01"], "before start"),
        (["--from", "2017-02-30", "--to", "2017-03-01"], "invalid date"),
        (["--from", "01/01/2017", "--to", "2017-03-01"], "expected YYYY-MM-DD"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--every", "fortnight"], "frequency"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--timezone", "Berlin"], "time zone"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--week-start", "x"], "week start"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--start-var", "1A"], "variable name"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--date-format", "x"], "renders no date"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--set", "NOEQUALS"], "NAME=VALUE"),
        (["--from", "2017-01-01", "--to", "2017-03-01", "--set", "END_DATE=x"], "override"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(arguments: list[str], fragment: str) -> None:
    result = runner.invoke(app, ["windows", *arguments])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert fragment in result.output
    as_json = runner.invoke(app, ["windows", *arguments, "--json"])
    assert as_json.exit_code == ExitCode.BAD_INPUT
    assert fragment in json.loads(as_json.stdout.splitlines()[0])["error"]["message"]


def test_runs_without_importing_prefect() -> None:
    script = (
        "import sys\n"
        "from cml_tasks.cli import main\n"
        "try:\n"
        "    main(['windows', '--from', '2017-01-01', '--to', '2017-12-31', '--every', 'month'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "assert 'prefect' not in sys.modules, 'prefect was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "12 windows" in done.stdout


def test_the_readme_command() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("cml-jobs windows ")]
    result = runner.invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("12 windows, every month (UTC)")


def test_item_14_windows_escapes_control_characters_as_the_dry_run_does() -> None:
    """`--set` and `--date-format` (`%n`, ESC, OSC) printed raw could forge lines."""
    forged = "x\x1b]0;pwned\x07\n  2099-01  START_DATE=2099-01-01"
    args = ["windows", "--from", "2017-01-01", "--to", "2017-01-31"]
    result = runner.invoke(app, [*args, "--set", f"A={forged}", "--date-format", "%Y-%m-%d%n"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2, lines  # the header and January: no forged line
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert lines[1] == (
        "  2017-01  START_DATE=2017-01-01\\x0a END_DATE=2017-01-31\\x0a "
        "A=x\\x1b]0;pwned\\x07\\x0a  2099-01  START_DATE=2099-01-01"
    )
    as_json = runner.invoke(app, [*args, "--set", f"A={forged}", "--json"])
    assert json.loads(as_json.output)[0]["environment"]["A"] == forged
    assert "\x1b" not in as_json.output
