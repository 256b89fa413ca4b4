"""Backfill speed against a CML that answers every start in 100 ms (run by hand, not in tests).

    .venv/bin/python bench/backfill.py                    # both databases, 240 and 1000 windows
    .venv/bin/python bench/backfill.py --db postgresql --windows 240
    .venv/bin/python bench/backfill.py --code /tmp/before  # the same, for another checkout

Starts the emulator (latency 100 ms on every start), then for each database a throwaway
PostgreSQL (or SQLite) `prefect server start` with the project's limit raised to the
concurrency. For each size it measures, in the same run: the baseline (a plain asyncio +
httpx loop of v1 starts at the same concurrency), `cml-jobs backfill ... --json` as a user
runs it (a subprocess on a fresh PREFECT_HOME: wall time, CPU, peak RSS), and the same
command again (every window already started). Every exactly-once guarantee stays on: the
emulator's run count is checked after each step. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))
from _shared import add_server_settings, server_cpu  # noqa: E402

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cml-bench-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

LATENCY = 0.1
RERUN_PAUSE = 15.0
"""Seconds between a backfill and its rerun: the server first records the backfill's task-run
events (seconds of backlog after 1,000 windows), which is not the rerun's own cost."""
RUN_CLI = (
    "import atexit, resource, sys\n"
    "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: print(f'maxrss_kb={peak()}', file=sys.stderr))\n"
    "from cml_tasks.cli import main\n"
    "main()\n"
)
"""`cml-jobs`, reporting its own peak RSS on exit."""


@dataclass
class Row:
    figure: str
    seconds: float
    baseline: float | None = None
    cpu: float | None = None
    rss_mb: float | None = None
    server_cpu: float | None = None
    target: str = ""

    def cells(self) -> list[str]:
        ratio = f"{self.seconds / self.baseline:.1f}x" if self.baseline else ""
        return [
            self.figure,
            f"{self.seconds:.2f} s",
            f"{self.baseline:.2f} s" if self.baseline else "",
            ratio,
            f"{self.cpu:.1f} s" if self.cpu is not None else "",
            f"{self.rss_mb:.0f} MB" if self.rss_mb is not None else "",
            f"{self.server_cpu:.1f} s" if self.server_cpu is not None else "",
            self.target,
        ]


def plain_loop(url: str, key: str, starts: list[dict[str, str]], concurrency: int) -> float:
    """The baseline: v1 starts with asyncio + httpx, `concurrency` at once."""
    import httpx

    from cml_tasks.job import JobRef

    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    job = JobRef.parse(url)
    start_url = f"{job.host}/api/v1/projects/{job.username}/{job.project}/jobs/{job.job_id}/start"

    async def run() -> None:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(environment: dict[str, str]) -> None:
                async with limit:
                    answer = await client.post(
                        start_url,
                        json={"environment": environment},
                        headers={"Authorization": auth, "Content-Type": "application/json"},
                    )
                    answer.raise_for_status()

            await asyncio.gather(*(one(env) for env in starts))

    began = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - began


def command(
    code: Path, *args: str, env: dict[str, str], profile: Path | None = None
) -> tuple[float, float, float, str]:
    """Run `cml-jobs args` with `code` first on the path: wall s, CPU s, peak RSS MB, stdout.
    With `profile`, under py-spy, its samples (raw, collapsed stacks) written there."""
    spy = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "-f",
        "raw",
        "--subprocesses",
        "-o",
        str(profile),
        "--",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(
        [*(spy if profile else []), sys.executable, "-c", RUN_CLI, *args],
        env={**env, "PYTHONPATH": str(code)},
        cwd=code,  # `python -c` puts the working directory first on the path
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1, 7):  # 1, 7: some windows failed; the row says how many
        raise SystemExit(f"cml-jobs {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rss = float(done.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    out = done.stdout
    if profile:  # py-spy says what it sampled on the same stdout
        out = next(line for line in out.splitlines() if line.startswith("{"))
    return wall, cpu, rss, out


@contextmanager
def prefect_server(db: str, settings: list[str]) -> Iterator[str]:
    from conftest import running_postgres, running_prefect_server

    with ExitStack() as stack:
        extra = dict(setting.split("=", 1) for setting in settings)
        if db == "postgresql":
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = stack.enter_context(running_postgres())
        home = Path(tempfile.mkdtemp(prefix=f"cml-bench-{db}-"))
        server = stack.enter_context(running_prefect_server(home, **extra))
        yield server.api_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--windows", type=int, nargs="*", default=[240, 1000])
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--code", type=Path, default=REPOSITORY, help="checkout to measure")
    add_server_settings(parser)
    parser.add_argument(
        "--follow", type=int, default=0, metavar="N", help="also follow N runs at once (v2)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each first backfill with py-spy into DIR (slows it: not for timing)",
    )
    args = parser.parse_args()
    c = args.max_concurrency

    from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault

    rows: list[Row] = []
    notes: list[str] = []
    dbs = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    with Emulator() as cml:
        cml.inject(Fault(endpoint="v1.start", kind="latency", seconds=LATENCY))
        url = cml.job_url("alice", "risk-analysis", "208")
        for db in dbs:
            with prefect_server(db, args.server_setting) as api_url:
                set_project_limit(api_url, c)
                for n in args.windows:
                    every = "month" if n <= 240 else "day"
                    first = date(2000, 1, 1)
                    if every == "month":
                        last = date(2000 + (n - 1) // 12, (n - 1) % 12 + 1, 28)
                    else:
                        last = first + timedelta(days=n - 1)
                    starts = [{"START_DATE": f"{i}", "END_DATE": "x"} for i in range(n)]
                    baseline = plain_loop(url, DEFAULT_V1_KEY, starts, c)
                    before = len(cml.runs())
                    env = {
                        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                        "PREFECT_API_URL": api_url,
                        "PREFECT_HOME": tempfile.mkdtemp(prefix="cml-bench-home-"),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_LOGGING_LEVEL": "WARNING",
                        "CML_API_KEY": DEFAULT_V1_KEY,
                    }
                    backfill = [
                        "backfill", url, "--from", first.isoformat(), "--to", last.isoformat(),
                        "--every", every, "--max-concurrency", str(c), "--json",
                    ]  # fmt: skip
                    profile = args.profile / f"{db}-{n}.txt" if args.profile else None
                    served = server_cpu(api_url)
                    wall, cpu, rss, out = command(args.code, *backfill, env=env, profile=profile)
                    started = len(cml.runs()) - before
                    failures = _failures(out)  # a window that did not start is noted in its row
                    assert started == n or failures, f"{started} runs for {n} windows"
                    figure = f"{db}: {n} {every} windows, C={c}{failures}"
                    time.sleep(RERUN_PAUSE)  # the server's event consumers catch up meanwhile
                    served = server_cpu(api_url) - served
                    rows.append(Row(figure, wall, baseline, cpu, rss, served))
                    wall, cpu, rss, out = command(args.code, *backfill, env=env)
                    assert len(cml.runs()) - before == n, "a rerun started a window again"
                    figure = f"{db}: rerun, {n} started windows{_failures(out)}"
                    rows.append(Row(figure, wall, None, cpu, rss))
                if args.follow and db == dbs[0]:
                    notes.append(follow(cml, url, args.follow, args.code, env))
    print_table(rows)
    print("\n".join(notes))


def _failures(output: str) -> str:
    """ ", 1 error" when the backfill's JSON summary names windows that did not start."""
    report = json.loads(output)
    summary: str = report["summary"]
    failed = [part for part in summary.split(": ", 1)[1].split(", ") if "started" not in part]
    failed = [part for part in failed if "skipped" not in part]
    for outcome in report["outcomes"]:
        if outcome["result"] not in ("started", "skipped"):
            print(f"not started: {outcome}", file=sys.stderr)
    return f" ({', '.join(failed)})" if failed else ""


def follow(cml: object, url: str, n: int, code: Path, env: dict[str, str]) -> str:
    """`backfill --follow` of `n` daily windows, up to 64 at once, the project limit raised to
    match (runs last ~1.6 s, polls every second): CML requests per poll tick and per finished
    run, from the emulator's own log."""
    from cml_tasks.emulator import DEFAULT_V2_KEY, Emulator

    assert isinstance(cml, Emulator)
    at_once = min(n, 64)
    set_project_limit(env["PREFECT_API_URL"], at_once)
    first = date(2100, 1, 1)
    last = first + timedelta(days=n - 1)
    seen = len(cml.requests())
    wall, _, _, _ = command(
        code, "backfill", url, "--from", first.isoformat(), "--to", last.isoformat(),
        "--every", "day", "--max-concurrency", str(at_once), "--follow", "--poll", "1s",
        "--json", env={**env, "CML_API_V2_KEY": DEFAULT_V2_KEY},
    )  # fmt: skip
    made = cml.requests()[seen:]
    count = Counter(r["endpoint"] for r in made)
    listings = [r for r in made if r["endpoint"] == "v2.list_runs"]
    firsts = [
        datetime.fromisoformat(r["timestamp"]) for r in listings if "page_token" not in r["query"]
    ]
    tick = timedelta(seconds=0.9)
    most = max((sum(1 for t in firsts if a <= t < a + tick) for a in firsts), default=0)
    polls = count["v2.list_runs"] + count["v2.get_run"]
    return (
        f"follow {n} windows, {at_once} at once ({wall:.1f} s, poll 1 s): "
        f"{count['v2.create_run']} creates; {len(firsts)} listings (the witness's one, then "
        f"one per poll round; at most {most} begun in any 0.9 s) of {len(listings)} pages; "
        f"{count['v2.get_run']} single GETs; {polls / n:.2f} poll requests per run"
    )


def set_project_limit(api_url: str, size: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name("cml-project:alice:risk-analysis", size)


def print_table(rows: list[Row]) -> None:
    header = ["figure", "time", "plain loop", "ratio", "CPU", "peak RSS", "server CPU", "target"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
