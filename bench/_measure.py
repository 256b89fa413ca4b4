"""What the benchmarks read from the machine itself."""

from __future__ import annotations

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
