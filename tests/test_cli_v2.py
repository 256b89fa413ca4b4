"""`cml-jobs start --wait`, `runs` and `stop` against the emulator, with their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cml_tasks.cli import ExitCode, app, exit_code_for
from cml_tasks.emulator import (
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    Emulator,
    EmulatorConfig,
    default_config,
)

ENV = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}


@pytest.fixture(scope="module")
def cml() -> Iterator[Emulator]:
    data = default_config(time_scale=0.1).model_dump()
    skipped = {"id": "214", "name": "Skipped one", "outcome": "skipped"}
    data["projects"][0]["jobs"] = [*data["projects"][0]["jobs"], skipped]
    with Emulator(EmulatorConfig.model_validate(data)) as emu:
        yield emu


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("job_id", "code"),
    [
        ("208", ExitCode.OK),
        ("209", ExitCode.RUN_FAILED),
        ("210", ExitCode.RUN_TIMED_OUT),
        ("214", ExitCode.RUN_SKIPPED),
    ],
)
def test_start_wait_exits_with_the_outcome(cml: Emulator, job_id: str, code: int) -> None:
    url = cml.job_url("alice", "risk-analysis", job_id)
    exit_code, output = invoke(
        "start", url, "-e", "START_DATE=2017-01-01", "--wait", "--poll", "1s"
    )
    assert exit_code == code, output
    assert f"{url}/runs/" in output


def test_start_wait_timeout_stops_the_run(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "211")
    exit_code, output = invoke("start", url, "--wait", "--timeout", "1s", "--poll", "1s")
    assert exit_code == ExitCode.WAIT_TIMEOUT, output
    assert cml.runs()[-1]["stop_requested"]


def test_runs_and_stop(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "211")
    invoke("start", url, "-e", "WINDOW=w1")  # v1 start: shows up in v2 too
    exit_code, output = invoke("runs", url, "--json")
    assert exit_code == 0, output
    listed = json.loads(output)
    assert listed[0]["environment"] == {"WINDOW": "w1"}
    exit_code, output = invoke("runs", url)
    assert listed[0]["id"] in output and "WINDOW=w1" in output
    exit_code, output = invoke("stop", url, listed[0]["id"])
    assert exit_code == 0 and "Stop requested" in output, output
    exit_code, _ = invoke("stop", url, "no-such-run")
    assert exit_code == ExitCode.NOT_FOUND


def test_missing_v2_key_is_bad_input(cml: Emulator) -> None:
    result = CliRunner().invoke(
        app, ["runs", cml.job_url("alice", "risk-analysis", "208")], env={"CML_API_V2_KEY": None}
    )
    assert result.exit_code == ExitCode.BAD_INPUT


def test_a_stopped_run_has_its_own_code() -> None:
    from cml_tasks.job import JobRef
    from cml_tasks.models import JobRun, RunStatus
    from cml_tasks.run_errors import CMLRunStopped

    run = JobRun(id="r1", job=JobRef.parse("https://h/a/p/jobs/1"), status=RunStatus.STOPPED)
    assert exit_code_for(CMLRunStopped("stopped", run=run)) == ExitCode.RUN_STOPPED


def test_help_does_not_import_prefect() -> None:
    code = (
        "import sys\nfrom cml_tasks.cli import main\n"
        "try: main(['runs', '--help'])\nexcept SystemExit: pass\n"
        "assert 'prefect' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
