"""Prefect Variables as records and claims: latency, throughput, create races (run by hand).

    .venv/bin/python bench/prefect_variables.py [--rounds 30] [--n 100] [--sqlite]

Starts its own PostgreSQL and `prefect server start` on it with the test suite's helpers
(tests/conftest.py: `running_postgres`, `running_prefect_server`; PostgreSQL must be installed,
.ci/run does), and with `--sqlite` a second server on SQLite. On each server it measures:
  - a create race: 8 processes create the same variable name at the same instant, `--rounds`
    times, through raw HTTP (no client retries): exactly one 201 per round is expected;
  - latency of create, read, update, delete by name, `--n` of each, one sync client;
  - throughput of 8 threads (a sync client each) doing create+update on distinct names, and of
    one async client running the same 8 loops under asyncio.gather.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing as mp
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # sets a temporary PREFECT_HOME before anything imports Prefect

RECORD = {
    "job": "alice/risk-analysis/208",
    "window": "2017-01-01/2017-01-31",
    "status": "starting",
    "owner": "0123456789abcdef0123456789abcdef",
    "engine_id": None,
}
WORKERS = 8


def _racer(api: str, run: str, rounds: int, barrier: Any, out: Any) -> None:
    import httpx

    with httpx.Client(base_url=api, timeout=60) as http:
        http.get("/health")
        for r in range(rounds):
            barrier.wait()
            created = http.post("/variables/", json={"name": f"race-{run}-{r}", "value": RECORD})
            out.put((r, created.status_code))


def create_race(api: str, rounds: int) -> str:
    run, barrier = uuid.uuid4().hex[:8], mp.Barrier(WORKERS)
    out: Any = mp.Queue()
    racers = [
        mp.Process(target=_racer, args=(api, run, rounds, barrier, out)) for _ in range(WORKERS)
    ]
    for racer in racers:
        racer.start()
    answers = [out.get(timeout=600) for _ in range(WORKERS * rounds)]
    for racer in racers:
        racer.join()
    per_round: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for r, code in answers:
        per_round[r][code] += 1
    codes = sum(per_round.values(), collections.Counter[int]())
    exactly_one = sum(counts[201] == 1 for counts in per_round.values())
    return f"{exactly_one}/{rounds} rounds with exactly one 201; all answers {dict(codes)}"


def _ms(times: list[float]) -> str:
    p95 = sorted(times)[int(len(times) * 0.95)]
    return (
        f"mean {statistics.mean(times) * 1000:6.1f} ms  "
        f"median {statistics.median(times) * 1000:6.1f}  "
        f"p95 {p95 * 1000:6.1f}  max {max(times) * 1000:6.0f}"
    )


def latencies(n: int) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    names = [f"lat-{uuid.uuid4().hex[:8]}-{i:04d}" for i in range(n)]
    lines = []
    with get_client(sync_client=True) as client:
        client.read_variables(limit=1)  # connect first
        operations: list[tuple[str, Callable[[str], object]]] = [
            (
                "create",
                lambda name: client.create_variable(VariableCreate(name=name, value=RECORD)),
            ),
            ("read", client.read_variable_by_name),
            (
                "update",
                lambda name: client.update_variable(VariableUpdate(name=name, value=RECORD)),
            ),
            ("delete", client.delete_variable_by_name),
        ]
        for label, operation in operations:
            times = []
            for name in names:
                start = time.perf_counter()
                operation(name)
                times.append(time.perf_counter() - start)
            lines.append(f"{label:7} x{n}: {_ms(times)}")
    return lines


def threads_throughput(server: conftest.PrefectServer, per_worker: int) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    run, ready = uuid.uuid4().hex[:8], threading.Barrier(WORKERS + 1)

    def work(worker: int) -> None:
        # Prefect's settings (here the API URL) live in a context variable, which a new thread
        # does not inherit: without this, the thread's client would start an ephemeral server.
        with server.as_current_api(), get_client(sync_client=True) as client:
            client.read_variables(limit=1)
            ready.wait()
            ready.wait()
            for k in range(per_worker):
                name = f"thr-{run}-{worker}-{k:04d}"
                client.create_variable(VariableCreate(name=name, value=RECORD))
                client.update_variable(VariableUpdate(name=name, value=RECORD))

    workers = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    for worker in workers:
        worker.start()
    ready.wait()
    start = time.perf_counter()
    ready.wait()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    pairs = WORKERS * per_worker
    return f"{WORKERS} threads, sync client each: {pairs / seconds:5.0f} create+update pairs/s"


def gather_throughput(per_worker: int) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    run = uuid.uuid4().hex[:8]

    async def main() -> float:
        async with get_client() as client:
            await client.read_variables(limit=1)

            async def work(worker: int) -> None:
                for k in range(per_worker):
                    name = f"gat-{run}-{worker}-{k:04d}"
                    await client.create_variable(VariableCreate(name=name, value=RECORD))
                    await client.update_variable(VariableUpdate(name=name, value=RECORD))

            start = time.perf_counter()
            await asyncio.gather(*(work(w) for w in range(WORKERS)))
            return time.perf_counter() - start

    seconds = asyncio.run(main())
    pairs = WORKERS * per_worker
    return f"asyncio.gather of {WORKERS}, one client: {pairs / seconds:5.0f} create+update pairs/s"


def measure(label: str, server: conftest.PrefectServer, args: argparse.Namespace) -> None:
    print(f"{label} ({server.api_url})", flush=True)
    print(f"  create race, {WORKERS} processes: {create_race(server.api_url, args.rounds)}")
    with server.as_current_api():
        for line in latencies(args.n):
            print(f"  {line}")
        print(f"  {threads_throughput(server, args.n // 2)}")
        print(f"  {gather_throughput(args.n // 2)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30, help="create races per server")
    parser.add_argument("--n", type=int, default=100, help="operations of each kind")
    parser.add_argument("--sqlite", action="store_true", help="also a server on SQLite")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up when killed
    mp.set_start_method("fork")
    base = Path(tempfile.mkdtemp(prefix="cml-bench-variables-"))
    try:
        with ExitStack() as stack:
            start = time.perf_counter()
            url = stack.enter_context(conftest.running_postgres())
            up = time.perf_counter()
            (base / "pg").mkdir()
            server = stack.enter_context(
                conftest.running_prefect_server(
                    base / "pg", PREFECT_API_DATABASE_CONNECTION_URL=url
                )
            )
            print(
                f"PostgreSQL up in {up - start:.1f} s, "
                f"Prefect server on it in {time.perf_counter() - up:.1f} s"
            )
            measure("PostgreSQL", server, args)
            if args.sqlite:
                (base / "sqlite").mkdir()
                sqlite = stack.enter_context(conftest.running_prefect_server(base / "sqlite"))
                measure("SQLite", sqlite, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        conftest.pytest_sessionfinish()  # the temporary PREFECT_HOME conftest made


if __name__ == "__main__":
    main()
