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
