"""Shared fixtures. Prefect is configured here, before anything imports it: a temporary
PREFECT_HOME and no telemetry (the test machines have no internet)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="cml-prefect-tests-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in [name for name in os.environ if name.startswith("CML_")]:
    del os.environ[_name]  # a developer's own CML settings must not leak into tests


def pytest_sessionfinish() -> None:
    """Leave no temporary PREFECT_HOME behind."""
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


PREFECT = str(Path(sys.executable).with_name("prefect"))
"""The `prefect` CLI of the interpreter running the tests."""


# --- Prefect: one temporary API server for the whole session (it takes ~15 s to start) ---


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real, temporary Prefect API (SQLite) shared by every test that asks for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Client retries as their policies say, but without waiting between tries."""
    from cml_tasks import set_testing

    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture(autouse=True)
def _no_window_records_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test starts without backfill window records or locks. They are keyed by the job
    URL, and a new emulator may get the port of an earlier test's one: its records would
    make windows look started already."""
    yield
    homes = [Path(_PREFECT_HOME), *tmp_path_factory.getbasetemp().glob("prefect-server-home*")]
    for home in homes:
        for path in [*home.glob("storage/cml-backfill-*"), *home.glob("locks/cml-backfill/*")]:
            path.unlink(missing_ok=True)


# --- A real `prefect server start` process, for workers, `serve` processes and the CLI ---


@dataclass(frozen=True)
class PrefectServer:
    """A running `prefect server start` (SQLite, its own PREFECT_HOME)."""

    api_url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a Prefect subprocess (CLI, worker, serve) talking to this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            **extra,
        }

    @contextmanager
    def as_current_api(self) -> Iterator[None]:
        """Point this test process's Prefect client at this server (not the harness)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and its children (its own session), then SIGKILL if it lingers."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a background process in its own session, its output going to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port, shared by the session; up in ~15 s."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home)
    env = server.env(PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL")
    log = home / "server.log"
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(command, env, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited early:\n{log.read_text()[-3000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def process_pool(prefect_server: PrefectServer) -> str:
    """The README's work pool, created once with the README's command for every test using it."""
    name = "cml-process"
    created = subprocess.run(
        [PREFECT, "work-pool", "create", name, "--type", "process"],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    return name
