"""Fault soak: `cml-jobs backfill` of daily windows against a CML whose v1 start call fails in
every way it can, a SIGKILL of the backfill at a random point, then reruns until no window is
missing; every window reconciled against the emulator's own runs. Run by hand:

    .venv/bin/python bench/soak.py                          # 300 windows, v1 only and with v2
    .venv/bin/python bench/soak.py --windows 40 --keys v2   # one setting
    .venv/bin/python bench/soak.py --no-kill --seed 7

(`tests/test_soak.py` runs a short variant in the suite.)

Faults (`Fault(endpoint="v1.start", kind=..., rate=..., seed=...)`, one per kind, each at
`--rate`, so about 1 - (1 - rate)^8 of the start calls fail): 429 with Retry-After, 500, 502,
503, 504, a dropped connection, latency past the client's timeout (`CML_TIMEOUT=1`, latency
1.5 s: the run is created after the client gave up) and a lost answer (the run is created, the
answer never arrives). A killed first pass is resumed with every fault still on; the reruns
after that have them at half the rate, then none, until no window is missing.

Counted from the emulator (`Emulator.requests()`: each request's endpoint, status and the
fault it got; `Emulator.runs()`: each run's environment) and the window records on the
Prefect server: start calls, faults by kind, retries (start calls beyond one per window),
duplicates (windows with more than one CML run: must be 0), lost windows (no run and no record
saying the outcome is unknown, or a record naming a run CML does not have: must be 0). With
the v2 key every window must end with exactly one run; without it, windows whose start's
outcome is unknown stay reported and are never started a second time.

A process killed while holding windows frees them after its claim's lease (45 s; the tests'
machines use 30 s, `CML_CLAIM_LEASE_SECONDS`): the rerun after the kill waits that long.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))
if "PREFECT_HOME" not in os.environ:  # a test run has its own; make none to leave behind
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cml-soak-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from conftest import PrefectServer, machine_env  # noqa: E402

from cml_tasks.emulator import (  # noqa: E402
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    Emulator,
    Fault,
    default_config,
)

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))
KINDS = ("429", "500", "502", "503", "504", "drop", "latency", "lost_answer")
CLIENT_TIMEOUT = "1"
LATENCY = 1.5
FIRST_DAY = date(2017, 1, 1)
UNKNOWN = ("outcome_unknown", "starting")
"""Record states that say "a run may exist": the explanation of a window without a run (v1)."""


def fault_plan(rate: float, seed: int) -> list[Fault]:
    """One fault per kind on the v1 start call, each at `rate`, each with its own seed."""
    return [
        Fault(
            endpoint="v1.start",
            kind=kind,  # type: ignore[arg-type]
            rate=rate,
            seed=seed * 100 + i,
            seconds=LATENCY,
            retry_after=1,
        )
        for i, kind in enumerate(KINDS)
    ]


def covering_seed(rate: float, calls: int, start: int = 0) -> int:
    """The first seed from `start` whose faults hit every kind within `calls` start calls,
    with at least 30% of them faulted. The k-th call to an endpoint meets the same fault
    whatever the timing (each fault draws from its own seeded generator, in a fixed order),
    so this holds in the soak as long as it makes that many start calls."""
    from cml_tasks.emulator._faults import FaultPlan

    seed = start
    while True:
        plan = FaultPlan()
        for fault in fault_plan(rate, seed):
            plan.add(fault)
        drawn = [plan.draw("v1.start") for _ in range(calls)]
        kinds = Counter(fault.kind for fault in drawn if fault is not None)
        if set(kinds) == set(KINDS) and sum(kinds.values()) >= 0.3 * calls:
            return seed
        seed += 1


@dataclass
class Pass:
    """One `cml-jobs backfill` process of the soak."""

    label: str
    seconds: float
    exit_code: int | None
    """None: SIGKILLed."""
    results: Counter[str] = field(default_factory=Counter)
    start_calls: int = 0
    faulted: int = 0
    faults_on: bool = True
    """Whether it ran with the full fault plan (the first pass, and its resumption)."""


@dataclass
class SoakReport:
    """What one soak did and found."""

    name: str
    windows: int
    v2: bool
    fault_rate: float
    passes: list[Pass]
    start_calls: int
    faults: Counter[str]
    list_calls: int
    runs: int
    duplicates: list[str]
    lost: list[str]
    disagreeing: list[str]
    """Windows with a run whose record says neither started nor outcome unknown."""
    unknown_without_run: list[str]
    unknown_with_run: list[str]
    started_once: int
    killed_holding: int | None
    """Windows the killed process held ('starting' records) when it died; None: no kill."""
    seconds: float

    @property
    def faulted(self) -> int:
        return sum(self.faults.values())

    @property
    def retries(self) -> int:
        return self.start_calls - self.windows

    @property
    def faulted_share(self) -> float:
        """Faulted start calls in the passes that ran with every fault on."""
        calls = sum(p.start_calls for p in self.passes if p.faults_on)
        return sum(p.faulted for p in self.passes if p.faults_on) / calls if calls else 0.0

    def problems(self) -> list[str]:
        """What breaks the soak's promises (empty: all kept)."""
        found = []
        if self.duplicates:
            found.append(f"{len(self.duplicates)} duplicated windows: {self.duplicates[:5]}")
        if self.lost:
            found.append(f"{len(self.lost)} lost windows: {self.lost[:5]}")
        if self.disagreeing:
            found.append(f"records disagree with CML: {self.disagreeing[:5]}")
        if self.v2 and self.started_once != self.windows:
            found.append(f"with the v2 key {self.started_once} of {self.windows} windows ran once")
        if self.fault_rate and self.faulted_share < 0.3:
            found.append(f"only {self.faulted_share:.0%} of the start calls faulted")
        missing = set(KINDS) - set(self.faults)
        if missing:
            found.append(f"fault kinds never injected: {sorted(missing)}")
        return found

    def text(self) -> str:
        keys = "v1 + v2 keys" if self.v2 else "v1 key only"
        share = self.faulted / self.start_calls if self.start_calls else 0.0
        kinds = ", ".join(f"{kind} {self.faults[kind]}" for kind in KINDS)
        lines = [
            f"{self.name}: {self.windows} daily windows, {keys}, fault rate {self.fault_rate:g}"
            f" per kind ({self.seconds:.0f} s)",
            f"  start calls {self.start_calls}: {self.faulted} faulted ({share:.0%} overall,"
            f" {self.faulted_share:.0%} with every fault on): {kinds}",
            f"  retries (start calls beyond one per window): {self.retries};"
            f" v2 list calls (reconciliation): {self.list_calls}",
        ]
        for p in self.passes:
            ended = "SIGKILLed" if p.exit_code is None else f"exit {p.exit_code}"
            counts = ", ".join(f"{n} {what}" for what, n in sorted(p.results.items()))
            calls = f"{p.start_calls} start calls, {p.faulted} faulted"
            lines.append(f"  {p.label}: {ended} after {p.seconds:.1f} s ({calls})  {counts}")
        if self.killed_holding is not None:
            lines.append(f"  the killed process held {self.killed_holding} windows mid-start")
        lines += [
            f"  CML runs {self.runs}; windows with exactly one run {self.started_once}",
            f"  outcome unknown (v1 only), no run: {len(self.unknown_without_run)},"
            f" one run: {len(self.unknown_with_run)} (never started again)",
            f"  duplicates: {len(self.duplicates)}   lost windows: {len(self.lost)}",
        ]
        return "\n".join(lines)


def _days(windows: int) -> tuple[date, date]:
    return FIRST_DAY, FIRST_DAY + timedelta(days=windows - 1)


def _records(server: PrefectServer, job_url: str) -> dict[date, dict[str, Any]]:
    """The job's window records on the server, by window start (claims left out)."""
    from cml_tasks.job import JobRef
    from cml_tasks.prefect_rest import PrefectAPI, job_records

    found = job_records(PrefectAPI(server.api_url, {}), JobRef.parse(job_url), at_least=0)
    assert found is not None
    return {record.window_start: record.model_dump(mode="json") for record in found.values()}


class Soak:
    """One soak: its emulator, its job, its machines."""

    def __init__(
        self,
        server: PrefectServer,
        root: Path,
        *,
        name: str,
        windows: int,
        v2: bool,
        rate: float,
        seed: int,
        kill: bool,
        max_concurrency: int = 8,
        max_reruns: int = 6,
        log: Callable[[str], None] = print,
    ) -> None:
        self.server, self.root, self.name = server, root, name
        self.windows, self.v2, self.rate, self.seed = windows, v2, rate, seed
        self.kill, self.max_concurrency, self.max_reruns = kill, max_concurrency, max_reruns
        self.log = log
        self.rng = random.Random(seed)
        self.passes: list[Pass] = []
        self.machines = 0
        self.killed_holding: int | None = None

    # --- running ----------------------------------------------------------------------------

    def run(self) -> SoakReport:
        """The first pass with every fault (SIGKILLed at a random point if `kill`; then
        resumed, faults still on), then reruns - faults at half the rate, then none - while a
        window is missing (at least one rerun after a pass that was not killed)."""
        began = time.monotonic()
        with Emulator(default_config()) as cml:
            self.cml = cml
            self.url = cml.job_url("alice", "risk-analysis", "208")
            for fault in fault_plan(self.rate, self.seed):
                cml.inject(fault)
            killed = self._first_pass()
            if killed:  # the resumed pass is the first rerun, with every fault on
                self._finish(self._backfill(), "resumed after the kill")
            reruns = 0
            while reruns < self.max_reruns and ((reruns == 0 and not killed) or self._missing()):
                reruns += 1
                cml.clear_faults()
                if reruns == 1 and self.rate:
                    for fault in fault_plan(self.rate / 2, self.seed + 1):
                        cml.inject(fault)
                self._finish(self._backfill(), f"rerun {reruns}", faults_on=False)
            return self._report(time.monotonic() - began)

    def _backfill(self) -> tuple[subprocess.Popen[bytes], Path, float]:
        self.machines += 1
        machine = f"{self.name}-{self.machines}"
        keys = {"CML_API_KEY": DEFAULT_V1_KEY}
        if self.v2:
            keys["CML_API_V2_KEY"] = DEFAULT_V2_KEY
        env = machine_env(
            self.server,
            self.root,
            machine,
            CML_TIMEOUT=CLIENT_TIMEOUT,
            PREFECT_LOGGING_LEVEL="WARNING",
            **keys,
        )
        first, last = _days(self.windows)
        command = [
            CML_JOBS, "backfill", self.url, "--from", first.isoformat(), "--to", last.isoformat(),
            "--every", "day", "--max-concurrency", str(self.max_concurrency), "--json",
        ]  # fmt: skip
        out = self.root / machine / "output"
        with out.open("wb") as sink, (self.root / machine / "stderr").open("wb") as errors:
            process = subprocess.Popen(
                command,
                cwd=self.root / machine / "work",
                env=env,
                stdout=sink,
                stderr=errors,
                start_new_session=True,
            )
        return process, self.root / machine, time.monotonic()

    def _start_calls(self) -> int:
        return sum(1 for r in self.cml.requests() if r["endpoint"] == "v1.start")

    def _first_pass(self) -> bool:
        """The first backfill, killed at a random point if `kill`: whether it was."""
        started = self._backfill()
        if not self.kill:
            self._finish(started, "first pass")
            return False
        process, _, began = started
        target = self.rng.randint(1, max(1, self.windows // 3))
        deadline = time.monotonic() + 300
        while self._start_calls() < target and process.poll() is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: no {target} start calls in 300 s")
            time.sleep(0.02)
        time.sleep(self.rng.uniform(0.0, 0.5))
        if process.poll() is not None:  # it finished first: count it as a pass
            self._finish(started, "first pass (ended before the kill)")
            return False
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.passes.append(Pass("first pass", time.monotonic() - began, None, **self._counts()))
        records = _records(self.server, self.url)
        self.killed_holding = sum(1 for r in records.values() if r["status"] == "starting")
        self.log(
            f"{self.name}: SIGKILL after {self._start_calls()} start calls "
            f"(aimed at {target}), {self.killed_holding} windows held"
        )
        return True

    def _counts(self) -> dict[str, int]:
        """Start calls and faulted ones since the previous pass ended."""
        starts = [r for r in self.cml.requests() if r["endpoint"] == "v1.start"]
        done = sum(p.start_calls for p in self.passes)
        new = starts[done:]
        return {"start_calls": len(new), "faulted": sum(1 for r in new if r["fault"])}

    def _finish(
        self,
        started: tuple[subprocess.Popen[bytes], Path, float],
        label: str,
        *,
        faults_on: bool = True,
    ) -> None:
        process, machine, began = started
        try:
            code = process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit(f"{self.name}: {label} still running after 900 s") from None
        seconds = time.monotonic() - began
        out = (machine / "output").read_text(errors="replace").strip()
        results: Counter[str] = Counter()
        try:
            report = json.loads(out.splitlines()[-1])
            results = Counter(o["result"] for o in report["outcomes"])
        except (IndexError, ValueError, KeyError, TypeError):
            errors = (machine / "stderr").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{self.name}: {label} exit {code}, no report:\n{errors}") from None
        if code not in (0, 1, 7):
            errors = (machine / "stderr").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{self.name}: {label} exit {code}:\n{errors}")
        self.passes.append(
            Pass(label, seconds, code, results, faults_on=faults_on, **self._counts())
        )
        self.log(f"{self.name}: {label} exit {code} in {seconds:.1f} s: {dict(results)}")

    def _missing(self) -> list[date]:
        """Windows not settled yet: no record saying started (v2), or saying neither started
        nor outcome unknown (v1 only)."""
        records = _records(self.server, self.url)
        first, _ = _days(self.windows)
        settled = ("started",) if self.v2 else ("started", *UNKNOWN)
        days = (first + timedelta(days=i) for i in range(self.windows))
        return [d for d in days if d not in records or records[d]["status"] not in settled]

    # --- reconciling ------------------------------------------------------------------------

    def _report(self, seconds: float) -> SoakReport:
        records = _records(self.server, self.url)
        runs_by_day: dict[str, list[str]] = {}
        for run in self.cml.runs():
            if run["job_id"] == "208":
                runs_by_day.setdefault(run["environment"]["START_DATE"], []).append(run["id"])
        requests = self.cml.requests()
        starts = [r for r in requests if r["endpoint"] == "v1.start"]
        duplicates, lost, disagreeing, unknown_none, unknown_one = [], [], [], [], []
        once = 0
        first, _ = _days(self.windows)
        for i in range(self.windows):
            day = first + timedelta(days=i)
            runs = runs_by_day.get(day.isoformat(), [])
            record = records.get(day)
            status = record["status"] if record else None
            if len(runs) > 1:
                duplicates.append(f"{day} ({len(runs)} runs)")
            elif not runs and status not in UNKNOWN:
                lost.append(f"{day} (no run; record {status})")
            elif runs and status == "started" and record and record["engine_id"] not in runs:
                lost.append(f"{day} (record names {record['engine_id']}, CML has {runs})")
            elif status in UNKNOWN:
                (unknown_one if runs else unknown_none).append(day.isoformat())
            elif runs and status != "started":
                disagreeing.append(f"{day} (run {runs[0]}; record {status})")
            if len(runs) == 1 and status == "started":
                once += 1
        return SoakReport(
            name=self.name,
            windows=self.windows,
            v2=self.v2,
            fault_rate=self.rate,
            passes=self.passes,
            start_calls=len(starts),
            faults=Counter(r["fault"] for r in starts if r["fault"]),
            list_calls=sum(1 for r in requests if r["endpoint"] == "v2.list_runs"),
            runs=sum(len(v) for v in runs_by_day.values()),
            duplicates=duplicates,
            lost=lost,
            disagreeing=disagreeing,
            unknown_without_run=unknown_none,
            unknown_with_run=unknown_one,
            started_once=once,
            killed_holding=self.killed_holding,
            seconds=seconds,
        )


def raise_project_limit(server: PrefectServer, size: int) -> None:
    """The project's global limit out of the way: a killed process's slots come back only when
    their lease ends, and the soak is about faults, not the limit."""
    from prefect.client.orchestration import get_client

    with server.as_current_api(), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("cml-project:alice:risk-analysis", size)


def main() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from conftest import running_prefect_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.05, help="per fault kind (8 kinds)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keys", choices=["v1", "v2", "both"], default="both")
    parser.add_argument("--no-kill", dest="kill", action="store_false")
    parser.add_argument("--max-concurrency", type=int, default=8)
    args = parser.parse_args()

    settings = {"v1": [False], "v2": [True], "both": [False, True]}[args.keys]
    home = Path(tempfile.mkdtemp(prefix="cml-soak-server-"))
    root = Path(tempfile.mkdtemp(prefix="cml-soak-machines-"))
    with running_prefect_server(home) as server:
        raise_project_limit(server, 64)
        soaks = [
            Soak(
                server,
                root,
                name="v2" if v2 else "v1",
                windows=args.windows,
                v2=v2,
                rate=args.rate,
                seed=covering_seed(args.rate, args.windows, args.seed + 100 * i),
                kill=args.kill,
                max_concurrency=args.max_concurrency,
            )
            for i, v2 in enumerate(settings)
        ]
        with ThreadPoolExecutor(len(soaks)) as pool:
            reports = list(pool.map(Soak.run, soaks))
    failed = False
    for report in reports:
        print(report.text())
        for problem in report.problems():
            print(f"  PROBLEM: {problem}")
            failed = True
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
