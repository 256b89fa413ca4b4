"""Per-window overhead of a backfill against the emulator (run by hand, not in tests).

    /work/venv/bin/python bench/backfill.py [--windows 200] [--max-concurrency 8]

Measures, in one run on one machine: a baseline of N plain `CMLClient.start` calls in a loop,
then the `cml-backfill` flow over N daily windows (temporary Prefect API and PREFECT_HOME),
then the same backfill again (every window skipped from its record). Prints windows/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date, timedelta

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cml-bench-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--project-limit", type=int, default=64, help="0: none")
    args = parser.parse_args()
    n = args.windows

    from prefect.testing.utilities import prefect_test_harness

    from cml_tasks import CMLClient, CMLSettings
    from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator
    from cml_tasks.prefect.backfill import cml_backfill
    from cml_tasks.window_options import WindowOptions

    os.environ["CML_API_KEY"] = DEFAULT_V1_KEY
    start, end = date(2000, 1, 1), date(2000, 1, 1) + timedelta(days=n - 1)
    with Emulator() as emu, prefect_test_harness(server_startup_timeout=60):
        url = emu.job_url("alice", "risk-analysis", "208")
        with CMLClient(CMLSettings.load()) as client:
            t0 = time.perf_counter()
            for i in range(n):
                client.start(url, {"START_DATE": str(i)})
            baseline = time.perf_counter() - t0

        def backfill() -> float:
            t = time.perf_counter()
            cml_backfill(
                job=url,
                start=start,
                end=end,
                options=WindowOptions(every="day"),
                max_concurrency=args.max_concurrency,
                project_limit=args.project_limit,
            )
            return time.perf_counter() - t

        first = backfill()
        again = backfill()
        assert len(emu.runs()) == 2 * n, len(emu.runs())

    print(f"baseline: {n} CMLClient.start calls in a loop: {baseline:.2f} s, {n / baseline:.0f}/s")
    print(
        f"backfill: {n} windows, max_concurrency={args.max_concurrency}, "
        f"project_limit={args.project_limit}: {first:.2f} s, "
        f"{n / first:.1f} windows/s, {first / baseline:.1f}x the baseline, "
        f"{1000 * (first - baseline) / n:.0f} ms overhead per window"
    )
    print(f"resume:   {n} windows all skipped: {again:.2f} s, {n / again:.1f} windows/s")


if __name__ == "__main__":
    main()
