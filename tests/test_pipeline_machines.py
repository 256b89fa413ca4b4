"""Pipelines on many machines, one truth: `cml-jobs backfill --pipeline` processes on separate
"machines" (their own PREFECT_HOME, working directory and temporary storage) share one
`prefect server start` - on PostgreSQL and on SQLite - and each (step, window) is started once:
after a machine is killed mid-step and another reruns the pipeline, and when two machines run
the same pipeline at the same moment as a third runs a plain backfill of a step's job.
The emulator's record of runs is the judge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PrefectServer, machine_env, server_records

from cml_tasks.backfill import WindowStatus
from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, Fault, default_config

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))
KEYS = {"CML_API_KEY": DEFAULT_V1_KEY, "CML_API_V2_KEY": DEFAULT_V2_KEY}
HALF_YEAR = ["--from", "2017-01-01", "--to", "2017-06-30"]
FAST = ["--poll", "1s"]
LIMIT = "cml-project:alice:risk-analysis"
JOBS = ("208", "212", "213")
"""ingest, train, score."""
MONTHS = [f"2017-{m:02d}" for m in range(1, 7)]


@pytest.fixture(params=["postgresql", "sqlite"])
def server(request: pytest.FixtureRequest) -> PrefectServer:
    """The shared Prefect server, on each database; the project's limit out of the way (a
    killed machine's slots come back only when their lease ends)."""
    from prefect.client.orchestration import get_client

    name = "prefect_server_pg" if request.param == "postgresql" else "prefect_server"
    found: PrefectServer = request.getfixturevalue(name)
    with found.as_current_api(), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LIMIT, 50)
    return found


@dataclass
class Machine:
    """A `cml-jobs` process on its own machine; its output in files (no pipe to fill up)."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def tail(self) -> str:
        """The end of its output, for a failure message."""
        err = self.stderr.read_text(errors="replace")[-4000:]
        return f"--- {self.name} (exit {self.process.poll()}) stderr:\n{err}"

    def kill(self) -> None:
        """SIGKILL its whole session (it was started with start_new_session=True)."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def finish(self, timeout: float = 150) -> tuple[int, str]:
        """Wait for it to end (killed on timeout, failing the test): exit code and stdout."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} still running after {timeout:g} s\n{self.tail()}")
        return code, self.stdout.read_text()


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    """Every machine a test starts; any left running at its end is killed."""
    started: list[Machine] = []
    yield started
    for machine in started:
        machine.kill()


def cml_jobs(
    server: PrefectServer, root: Path, started: list[Machine], name: str, *args: str
) -> Machine:
    """`cml-jobs args` on machine `name` (v1 and v2 keys), in its own session."""
    env = machine_env(server, root, name, **KEYS)
    out, err = root / name / "stdout.txt", root / name / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [CML_JOBS, *args],
            cwd=root / name / "work",
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    machine = Machine(name, process, out, err)
    started.append(machine)
    return machine


def pipeline_file(cml: Emulator, root: Path) -> Path:
    """ingest (208), then train (212), then score (213), monthly."""
    jobs = f"{cml.url}/alice/risk-analysis/jobs"
    text = (
        "name: risk-monthly\noptions: {every: month, timezone: Europe/Berlin}\nsteps:\n"
        f"  - {{name: ingest, job: {jobs}/208}}\n"
        f"  - {{name: train, job: {jobs}/212, after: [ingest]}}\n"
        f"  - {{name: score, job: {jobs}/213, after: [train]}}\n"
    )
    path = root / "risk.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def backfill(
    server: PrefectServer,
    root: Path,
    started: list[Machine],
    name: str,
    path: Path,
    *extra: str,
) -> Machine:
    """`cml-jobs backfill --pipeline path` over the half year, `--json`, on machine `name`."""
    args = ["backfill", "--pipeline", str(path), *HALF_YEAR, *FAST, *extra, "--json"]
    return cml_jobs(server, root, started, name, *args)


def report_of(machine: Machine, timeout: float = 150) -> dict[str, Any]:
    """The JSON report of a machine that must exit 0."""
    code, out = machine.finish(timeout)
    assert code == 0, f"{out[-2000:]}\n{machine.tail()}"
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def grid(report: dict[str, Any]) -> dict[str, list[str]]:
    """`{"2017-03": ["succeeded", "succeeded", "succeeded"], ...}`."""
    return {row["window"]: [cell["result"] for cell in row["cells"]] for row in report["rows"]}


ALL_SUCCEEDED = {month: ["succeeded"] * 3 for month in MONTHS}


def starts(cml: Emulator) -> Counter[tuple[str, str]]:
    """How many runs each (job, START_DATE) has."""
    return Counter((run["job_id"], run["environment"]["START_DATE"]) for run in cml.runs())


ONCE_EACH = Counter({(job, f"{month}-01"): 1 for job in JOBS for month in MONTHS})


def run_ids(cml: Emulator) -> dict[tuple[str, str], str]:
    """Each (job, START_DATE)'s run id (the newest, if it has several)."""
    return {(run["job_id"], run["environment"]["START_DATE"]): run["id"] for run in cml.runs()}


def cell_runs(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    """Each (job, START_DATE) cell's run id, as a pipeline report names it (a step another
    machine finished first included)."""
    return {
        (cell["job_url"].rsplit("/", 1)[1], cell["environment"]["START_DATE"]): cell["engine_id"]
        for row in report["rows"]
        for cell in row["cells"]
    }


def named_runs_are_cml_s(report: dict[str, Any], cml: Emulator) -> bool:
    """Every run a pipeline report names is CML's one run of that (job, START_DATE)."""
    runs = run_ids(cml)
    return all(runs[key] == run for key, run in cell_runs(report).items())


def statuses(server: PrefectServer, cml: Emulator) -> Counter[WindowStatus]:
    """How many of the pipeline jobs' window records say each status right now."""
    found: Counter[WindowStatus] = Counter()
    for job_id in JOBS:
        records = server_records(server, cml.job_url("alice", "risk-analysis", job_id))
        found.update(record.status for record in records.values())
    return found


def test_a_pipeline_killed_mid_step_is_finished_by_another_machine_once_each(
    server: PrefectServer, machines: list[Machine], tmp_path: Path
) -> None:
    """SIGKILL while steps are being started and followed; a rerun elsewhere adopts or
    follows what the dead machine started (its claims end after 30 s) and starts the rest."""
    with Emulator(default_config(time_scale=2.0)) as cml:  # a run lasts about 3 s
        # Each start is in flight for 3 s: a `starting` record seen is still one at the kill.
        cml.inject(Fault(endpoint="v2.create_run", kind="latency", seconds=3.0))
        path = pipeline_file(cml, tmp_path)
        first = backfill(server, tmp_path, machines, "a", path, "--max-concurrency", "3")
        deadline = time.monotonic() + 60
        while True:
            assert first.process.poll() is None, f"ended before the kill\n{first.tail()}"
            assert time.monotonic() < deadline, f"no step in flight\n{first.tail()}"
            if len(cml.runs()) >= 4 and statuses(server, cml)[WindowStatus.STARTING] >= 1:
                break
            time.sleep(0.2)
        first.kill()
        at_kill = statuses(server, cml)
        assert sum(at_kill.values()) < 18 and at_kill[WindowStatus.SUCCEEDED] < 18, at_kill
        # Usually a start is in flight at the kill (`starting`); on a loaded machine it may
        # have landed meanwhile: then the rerun follows it. Either way, once each.
        cml.clear_faults()

        rerun = backfill(server, tmp_path, machines, "b", path, "--max-concurrency", "3")
        report = report_of(rerun)
        context = f"records at the kill: {dict(at_kill)}\n{rerun.tail()}"
        assert grid(report) == ALL_SUCCEEDED, context
        assert starts(cml) == ONCE_EACH, context
        assert cell_runs(report) == run_ids(cml), context  # no race: each cell names its run
        log = rerun.stderr.read_text(errors="replace")
        resolved = log.count("adopting it") + log.count("CML has no run of it")
        assert resolved >= at_kill[WindowStatus.STARTING], context


def test_two_machines_and_a_plain_backfill_at_once_start_each_step_once(
    server: PrefectServer, machines: list[Machine], tmp_path: Path
) -> None:
    """Two machines run the same pipeline while a third runs `cml-jobs backfill <job 208>`
    (ingest's job), all at the same moment: CML has one run of each (step, month); both
    pipelines end with every step succeeded, naming CML's runs; the plain backfill started or
    skipped each month, naming the run (one scenario: the three share their servers)."""
    with Emulator(default_config(time_scale=0.5)) as cml:
        for endpoint in ("v1.start", "v2.create_run"):  # overlap; plain starts go through v1
            cml.inject(Fault(endpoint=endpoint, kind="latency", seconds=0.3))
        path = pipeline_file(cml, tmp_path)
        url = cml.job_url("alice", "risk-analysis", "208")
        plain_args = ["backfill", url, *HALF_YEAR, "--every", "month", "--json"]
        plain = cml_jobs(server, tmp_path, machines, "plain", *plain_args)
        both = [backfill(server, tmp_path, machines, name, path) for name in ("a", "b")]
        plain_report = report_of(plain)
        reports = [report_of(machine) for machine in both]
        context = "\n".join(machine.tail() for machine in (plain, *both))
        assert starts(cml) == ONCE_EACH, context
        assert [grid(report) for report in reports] == [ALL_SUCCEEDED] * 2, context
        assert all(named_runs_are_cml_s(report, cml) for report in reports), context
        results = Counter(o["result"] for o in plain_report["outcomes"])
        assert sum(results.values()) == 6 and set(results) <= {"started", "skipped"}, results
        for outcome in plain_report["outcomes"]:  # the run it started, or the one it found
            run = run_ids(cml)[("208", outcome["window_start"])]
            assert outcome["engine_id"] == run, (outcome, context)
