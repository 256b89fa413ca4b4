"""`cml-jobs` as users run it: a subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cml_tasks.cli import ExitCode
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault

CML_JOBS = str(Path(sys.executable).parent / "cml-jobs")


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def run(
    *args: str, key: str | None = DEFAULT_V1_KEY, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CML_")}
    if key is not None:
        environ["CML_API_KEY"] = key
    environ.update(env)
    return subprocess.run(
        [CML_JOBS, *args], capture_output=True, text=True, env=environ, timeout=timeout
    )


def test_help_does_not_import_prefect() -> None:
    code = (
        "import sys\n"
        "from cml_tasks.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'prefect' not in sys.modules, 'prefect was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "start" in result.stdout and "Exit codes" in result.stdout


def test_start_prints_engine_id(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "208")
    result = run("start", url, "-e", "START_DATE=2017-01-01", "-e", "END_DATE=2017-01-31")
    assert result.returncode == 0, result.stderr
    engine_id = cml.runs()[0]["id"]
    assert f"engine id {engine_id}" in result.stdout
    assert url in result.stdout
    assert DEFAULT_V1_KEY not in result.stdout + result.stderr


def test_start_json(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "208")
    result = run("start", url, "-e", "START_DATE=2017-01-01", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["engine_id"] == cml.runs()[0]["id"]
    assert payload["environment"] == {"START_DATE": "2017-01-01"}
    assert DEFAULT_V1_KEY not in result.stdout


@pytest.mark.parametrize(
    ("args", "key", "fault", "code", "fragment"),
    [
        (("not-a-job",), DEFAULT_V1_KEY, None, ExitCode.BAD_INPUT, "Invalid job"),
        (("{job}", "-e", "1X=2"), DEFAULT_V1_KEY, None, ExitCode.BAD_INPUT, "1X"),
        (("{job}",), None, None, ExitCode.BAD_INPUT, "CML_API_KEY"),
        (("{job}",), "wrong", None, ExitCode.AUTH, "authentication failed"),
        (("{missing}",), DEFAULT_V1_KEY, None, ExitCode.NOT_FOUND, "not found"),
        (("{job}",), DEFAULT_V1_KEY, "503", ExitCode.SERVER, "503"),
        (("{job}",), DEFAULT_V1_KEY, "lost_answer", ExitCode.OUTCOME_UNKNOWN, "may have started"),
    ],
)
def test_exit_codes(
    cml: Emulator,
    args: tuple[str, ...],
    key: str | None,
    fault: str | None,
    code: ExitCode,
    fragment: str,
) -> None:
    if fault:
        cml.inject(Fault(endpoint="v1.start", kind=fault, retry_after=0))
    job = cml.job_url("alice", "risk-analysis", "208")
    missing = cml.job_url("alice", "risk-analysis", "777")
    argv = [a.format(job=job, missing=missing) for a in args]
    result = run("start", *argv, "--json", key=key)
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr
    assert json.loads(result.stdout)["error"]["message"] in result.stderr
    if key:
        assert key not in result.stdout + result.stderr


def test_bad_input_sends_nothing(cml: Emulator) -> None:
    url = cml.job_url("alice", "risk-analysis", "208")
    result = run("start", url, "-e", "START_DATE")
    assert result.returncode == ExitCode.BAD_INPUT
    assert "NAME=VALUE" in result.stderr
    assert cml.requests() == []


@pytest.mark.server  # starts a Prefect server of its own
def test_demo_backfills_a_year_and_starts_nothing_twice() -> None:
    result = run("demo", key=None, timeout=300)  # its time is measured by hand: 45 s alone
    assert result.returncode == 0, result.stderr
    assert "12 windows: 12 started" in result.stdout
    assert "START_DATE=2017-01-01 END_DATE=2017-01-31" in result.stdout
    assert "START_DATE=2017-12-01 END_DATE=2017-12-31" in result.stdout
    assert re.search(r"nothing started: January already has run [a-z0-9]{16}", result.stdout)
    assert "CML was asked for 12 runs" in result.stdout
    first, fixed = result.stdout.split("The train job is fixed in CML")
    assert re.search(r"2017-02 .* succeeded +failed +not reached", first)
    assert "3 windows x 3 steps: 7 succeeded, 1 failed, 1 not reached" in first
    assert "--reprocess failed" in first
    assert "CML runs started: 5" in first  # ingest's months were the backfill's runs
    assert "3 windows x 3 steps: 9 succeeded" in fixed
    assert "CML runs started: 2" in fixed  # train and score of February, nothing else


def test_emulator_config_file(tmp_path: Path) -> None:
    """`cml-jobs emulator --config FILE` serves the file's users; a bad file is exit code 2."""
    import socket

    import httpx

    bad = tmp_path / "bad.toml"
    bad.write_text('time_scale = "fast"\n')
    result = run("emulator", "--config", str(bad), key=None)
    assert result.returncode == ExitCode.BAD_INPUT
    assert "time_scale" in result.stderr

    seed = tmp_path / "seed.toml"
    seed.write_text(
        """
[[users]]
username = "carol"
name = "Carol"
email = "carol@example.com"
v1_key = "carolv1key0000000000000000000000"
v2_key = "carolv2key0000000000000000000000"

[[projects]]
id = "aaaa-bbbb-cccc-dddd"
owner = "carol"
name = "pricing"

[[projects.jobs]]
id = "7"
name = "Price book"
"""
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [CML_JOBS, "emulator", "--port", str(port), "--config", str(seed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/carol/pricing/jobs/7"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_emulator/runs")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "emulator did not come up"
                time.sleep(0.1)
        result = run("start", url, "--json", key="carolv1key0000000000000000000000")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["job"]["username"] == "carol"
    finally:
        server.terminate()
        server.wait(timeout=10)
