"""`make ui` (`cml-jobs demo --ui`) exactly as the README says: its Prefect UI asks its own
server's API (not port 4200's), and SIGTERM stops it with every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


@pytest.mark.server  # starts a Prefect server of its own
def test_the_demo_ui_asks_its_own_api_and_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CML_", "PREFECT_API"))}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [CML_JOBS, "demo", "--ui"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        while (found := re.search(r"The Prefect UI: (http://\S+)/runs", out.read_text())) is None:
            assert demo.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        root = found.group(1)
        settings = httpx.get(f"{root}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"{root}/api"  # not http://127.0.0.1:4200/api
        assert httpx.get(f"{root}/api/health", timeout=10).status_code == 200
        flow_runs = httpx.post(f"{root}/api/flow_runs/filter", json={}, timeout=30).json()
        late = {r["name"]: r["estimated_start_time_delta"] for r in flow_runs}
        assert any(name.endswith("2017-01") for name in late), late  # the window run
        # The UI shows a delta over a minute as "late": a run scheduled in 2017 would show
        # "9y 306d late". Under a day leaves room for a loaded machine.
        assert all(delta < 86_400 for delta in late.values()), late
        started = _children(demo.pid)
        assert started, "the demo started no Prefect server"
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "Stopped." in out.read_text()
    deadline = time.monotonic() + 20
    while (left := {pid for pid in started if Path(f"/proc/{pid}").exists()}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert not left, f"still running after SIGTERM: {left}"
