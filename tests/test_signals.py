"""Signals that end `cml-jobs` while it starts or follows a run (issue items 17 and 19): a
real `cml-jobs` subprocess against the emulator, signalled once its request reached CML."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault, OutcomeRule

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        emulator.set_outcomes(
            "208",
            [OutcomeRule(when={"CASE": "signal"}, outcome="succeeded", running_seconds=600)],
        )
        yield emulator


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_")}
    return env | {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}


def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=str)
def test_item_17_a_stopping_signal_during_start_wait_stops_the_run(
    cml: Emulator, sig: signal.Signals
) -> None:
    """SIGTERM and SIGHUP killed `start --wait` and left the CML run going; like SIGINT,
    they now stop the run and exit 130."""
    job = cml.job_url("alice", "risk-analysis", "208")
    args = [CML_JOBS, "start", job, "-e", "CASE=signal", "--wait", "--poll", "1s"]
    process = subprocess.Popen(
        args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("scheduling")  # following the run now
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    (run,) = cml.runs()
    assert process.returncode == 130, err
    assert run["stop_requested"], run
    assert f"Stopping CML run {run['id']} of risk-analysis/208: interrupted" in err
    assert "Traceback" not in out + err


def test_item_19_interrupted_v1_start_says_the_run_may_have_started(cml: Emulator) -> None:
    """Ctrl-C once the v1 start request was sent exited 130 with no message, though CML may
    have created the run: it now says so, and how to check."""
    # CML creates the run and answers, but the answer arrives a byte every 10 s.
    cml.inject(Fault(endpoint="v1.start", kind="drip", seconds=10))
    job = cml.job_url("alice", "risk-analysis", "208")
    process = subprocess.Popen(
        [CML_JOBS, "start", job, "-e", "CASE=signal"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _until(lambda: any(r["endpoint"] == "v1.start" for r in cml.requests()))
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert len(cml.runs()) == 1
    assert "the request may have reached CML, so the run may have started" in err
    assert f"Check with `cml-jobs runs {job}` before starting it again" in err
    assert "Traceback" not in out + err


def _temporary_server_env(home: Path, **extra: str) -> dict[str, str]:
    """`_env()` with no Prefect API: `cml-jobs backfill` starts a temporary Prefect server,
    its `PREFECT_HOME` `home`."""
    env = {k: v for k, v in _env().items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def _processes_of(home: Path) -> set[int]:
    """Every process whose environment has `PREFECT_HOME=home` (what `cml-jobs` started)."""
    marker = f"PREFECT_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


@pytest.mark.server
@pytest.mark.parametrize(
    ("sig", "temporary"),
    [(signal.SIGTERM, True), (signal.SIGHUP, False)],
    ids=["SIGTERM-temporary-server", "SIGHUP"],
)
def test_items_17_18_a_stopping_signal_during_backfill_stops_its_runs_and_leaves_nothing(
    cml: Emulator,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    sig: signal.Signals,
    temporary: bool,
) -> None:
    """SIGTERM killed a real `backfill` and left its temporary Prefect server running (parent
    PID 1) and holding stdout, so `| tee` never ended. Now SIGTERM and SIGHUP act as Ctrl-C:
    the followed runs are stopped, the command exits 130, and nothing it started outlives it
    (stdout closes). SIGHUP with the session's server (`PREFECT_API_URL`): the same handler,
    without a second temporary server to start."""
    home, log = tmp_path / "home", tmp_path / "stderr"
    api = (
        {} if temporary else {"PREFECT_API_URL": request.getfixturevalue("prefect_server").api_url}
    )
    job = cml.job_url("alice", "risk-analysis", "208")
    args = [CML_JOBS, "backfill", job, "--from", "2017-01-01", "--to", "2017-02-28"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*args, "--follow", "--poll", "1s", "--set", "CASE=signal"],
            env=_temporary_server_env(home, **api),
            cwd=tmp_path,
            stdout=subprocess.PIPE,  # which the temporary server shares
            stderr=stderr,
            text=True,
        )
    try:
        _until(lambda: len(cml.runs()) == 2 or process.poll() is not None, seconds=180)
        assert process.poll() is None, log.read_text()[-3000:]
        started = _processes_of(home)
        assert len(started) >= (2 if temporary else 1), "no temporary server"  # and the CLI
        process.send_signal(sig)
        out, _ = process.communicate(timeout=120)  # ends once nothing holds stdout
    finally:
        process.kill()
    err = log.read_text()
    assert process.returncode == 130, err[-3000:]
    assert all(run["stop_requested"] for run in cml.runs()), cml.runs()
    assert "Interrupted" in err and "Traceback" not in out + err, err[-3000:]
    _until(lambda: not _processes_of(home) & started, seconds=30)


def test_item_20_a_temporary_prefect_server_that_does_not_start_is_a_clear_error(
    cml: Emulator, tmp_path: Path
) -> None:
    """Prefect's raw RuntimeError traceback, when the temporary server did not start in time,
    is now one message naming PREFECT_API_URL and the startup timeout; nothing is sent to CML
    and no process is left."""
    home = tmp_path / "home"
    job = cml.job_url("alice", "risk-analysis", "208")
    done = subprocess.run(
        [CML_JOBS, "backfill", job, "--from", "2017-01-01", "--to", "2017-02-28"],
        env=_temporary_server_env(home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    said = done.stderr
    assert "The temporary Prefect server did not start within 1 s" in said, said[-3000:]
    assert "PREFECT_API_URL" in said and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in said
    assert not [r for r in cml.requests() if r["endpoint"].endswith("start")]
    _until(lambda: not _processes_of(home), seconds=30)


def test_an_interrupt_stops_the_workers_until_the_next_flow_waits() -> None:
    """An interrupt in a flow's wait stops its workers; an error does not; and a process
    that lives on (a notebook after Ctrl-C) runs its next flow's windows normally."""
    from cml_tasks._stopping import stop_requested, stopping_workers_if_interrupted

    with pytest.raises(ValueError), stopping_workers_if_interrupted():
        raise ValueError("a window's error")
    assert not stop_requested()
    with pytest.raises(KeyboardInterrupt), stopping_workers_if_interrupted():
        raise KeyboardInterrupt
    assert stop_requested()
    with stopping_workers_if_interrupted():
        assert not stop_requested()
