"""What Prefect itself costs per window, without cml_tasks (run by hand, not in tests).

    .venv/bin/python bench/prefect_floor.py                  # PostgreSQL, 240 items
    .venv/bin/python bench/prefect_floor.py --db sqlite --items 1000

Starts a throwaway `prefect server start` (PostgreSQL or SQLite) and times, at concurrency 8,
the building blocks a backfill window is made of, each alone: a 100 ms sleep (the plain
loop's CML call), two Prefect Variables created (a window record's claim and its
outcome), a global-concurrency slot taken and given back, and a flow of tagged or untagged
task runs that each sleep 100 ms. For each it prints the wall time and the CPU the Prefect
server process used (measured from /proc, waiting a few seconds for its event consumers to
drain). The server's CPU per item is the floor of what a backfill on this machine can reach
while each window keeps its own task run and its own record.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _shared import add_server_settings, server_cpu

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cml-floor-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
CONCURRENCY = 8
DRAIN_SECONDS = 7.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--items", type=int, default=240)
    add_server_settings(parser)
    args = parser.parse_args()
    n = args.items

    from conftest import running_postgres, running_prefect_server

    with ExitStack() as stack:
        extra = dict(setting.split("=", 1) for setting in args.server_setting)
        if args.db == "postgresql":
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = stack.enter_context(running_postgres())
        server = stack.enter_context(running_prefect_server(Path(tempfile.mkdtemp()), **extra))
        os.environ["PREFECT_API_URL"] = server.api_url

        from prefect import flow, tags, task
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import VariableCreate
        from prefect.task_runners import ThreadPoolTaskRunner

        client = stack.enter_context(get_client(sync_client=True))
        client.upsert_global_concurrency_limit_by_name("floor", CONCURRENCY)

        def in_threads(one: Callable[[int], object]) -> None:
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(one, range(n)))

        def record(i: int) -> None:
            value = {"status": "starting", "holder": "host-1234-abcdef", "attempt": 0}
            client.create_variable(VariableCreate(name=f"floor-{i}", value=value, tags=["cml"]))
            value["status"] = "started"
            outcome = f"floor-{i}-outcome-a0"
            client.create_variable(VariableCreate(name=outcome, value=value, tags=["cml"]))

        def slot(i: int) -> None:
            answer = client.increment_concurrency_slots_with_lease(
                names=["floor"], slots=1, mode="concurrency", lease_duration=60
            )
            client.release_concurrency_slots_with_lease(answer.json()["lease_id"])

        @task(name="floor-window")
        def window(i: int) -> int:
            time.sleep(0.1)
            return i

        @flow(task_runner=ThreadPoolTaskRunner(max_workers=CONCURRENCY))  # type: ignore[arg-type]
        def windows(tagged: bool) -> None:
            futures = []
            for i in range(n):
                with tags(*(["cml", "cml-project:a/b", "cml-job:a/b/1"] if tagged else [])):
                    futures.append(window.submit(i))
            for future in futures:
                future.result()

        phases: list[tuple[str, Callable[[], object]]] = [
            (f"{n} sleeps of 100 ms (the plain loop)", lambda: in_threads(_sleep)),
            (f"{n} records (a claim and an outcome created)", lambda: in_threads(record)),
            (f"{n} slots taken and given back", lambda: in_threads(slot)),
            (f"{n} untagged task runs of 100 ms", lambda: windows(False)),
            (f"{n} tagged task runs of 100 ms", lambda: windows(True)),
        ]
        print(f"{args.db}, concurrency {CONCURRENCY}:")
        print(f"{'':45}  {'wall':>8}  {'server CPU':>10}  {'per item':>9}")
        for name, run in phases:
            time.sleep(DRAIN_SECONDS)
            cpu, began = server_cpu(server.api_url), time.perf_counter()
            run()
            wall = time.perf_counter() - began
            time.sleep(DRAIN_SECONDS)  # the server's event consumers catch up
            used = server_cpu(server.api_url) - cpu
            print(f"{name:45}  {wall:6.2f} s  {used:8.2f} s  {1000 * used / n:6.1f} ms")


def _sleep(i: int) -> None:
    time.sleep(0.1)


if __name__ == "__main__":
    main()
