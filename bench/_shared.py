"""What the benchmarks share: the server settings option, the server's CPU."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def server_cpu(api_url: str) -> float:
    """CPU seconds used so far by the `prefect server start` process serving `api_url`."""
    port = api_url.rsplit(":", 1)[1].split("/")[0].encode()
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"server" not in cmdline or port not in cmdline:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def add_server_settings(parser: argparse.ArgumentParser) -> None:
    """`--server-setting NAME=VALUE` (repeatable): the environment of the Prefect server."""
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the Prefect server, e.g. "
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE=100",
    )
