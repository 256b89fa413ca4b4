"""Shared fixtures. Prefect is configured here, before anything imports it: a temporary
PREFECT_HOME and no telemetry (the test machines have no internet)."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_PREFECT_HOME = tempfile.mkdtemp(prefix="cml-prefect-tests-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in [name for name in os.environ if name.startswith("CML_")]:
    del os.environ[_name]  # a developer's own CML settings must not leak into tests
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
    os.environ.pop(_name, None)  # nor a developer's Prefect API: tests name their own


def pytest_sessionfinish() -> None:
    """Leave no temporary PREFECT_HOME behind."""
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


SERVER_FIXTURES = frozenset(
    {
        "prefect_api",
        "prefect_server",
        "prefect_server_pg",
        "prefect_ui_server",
        "postgres_url",
        "process_pool",
        "browser",
        "server",  # the session's server, on each database (conftest's, or a file's own)
    }
)
"""Fixtures that start a Prefect server, PostgreSQL or a browser: their tests are `server`
tests, left out of `make check`."""


SLOWEST_FIRST = (
    "test_backfill.py",
    "test_pipeline_flows.py",
    "test_pipeline_machines.py[sqlite]",
    "test_pipeline_machines.py[postgresql]",
    "test_many_machines.py[sqlite]",
    "test_many_machines.py[postgresql]",
    "test_backfill_follow.py",
    "test_backfill_at_scale.py",
    "test_ui_browser.py",
    "test_backfill_cli.py",
    "test_pipeline_cli.py[sqlite]",
    "test_window_flow.py",
    "test_cli.py",
    "test_signals.py",
    "test_soak.py",
    "test_secret_scan.py",
    "test_demo_ui.py",
    "test_records_cli.py",
    "test_server_restart.py[sqlite]",
    "test_server_restart.py[postgresql]",
    "test_pipeline_cli.py[postgresql]",
    "test_cancel_e2e.py",
    "test_backfill_scale_out.py",
    "test_schedule_e2e.py",
)
"""`make test`'s groups that take longest (measured: each group's time in a process, from
`pytest -v` with timestamps), in that order. Its processes take whole groups, the longest
first, and the short ones fill in behind."""

SPLIT_BY_DATABASE = frozenset(
    {
        "test_pipeline_machines.py",
        "test_many_machines.py",
        "test_pipeline_cli.py",
        "test_server_restart.py",
    }
)
"""Files whose SQLite and PostgreSQL scenarios are two groups (each process already has
both servers): a long file is not left to one process at the end."""


def group_of(nodeid: str) -> str:
    """The test's group: its file, or its file and database (`SPLIT_BY_DATABASE`). A group
    runs in one process, so its module's fixtures are set up once."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    if file in SPLIT_BY_DATABASE:
        for database in ("sqlite", "postgresql"):
            if f"[{database}" in name or f"-{database}" in name:
                return f"{file}[{database}]"
    return file


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scheduler by scope, a scope being a `group_of`: a process takes whole groups,
    in collection order (`--no-loadscope-reorder`). Not `--dist loadgroup`: it finds groups
    in node ids it edits, which pytest 9.2 ignores, so each test was a group of its own and
    most processes set up most modules' fixtures (the UI server and Chromium four times)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that needs a server `server` (by its fixtures, or a `server` marker of
    its own for a test that starts one itself); the slowest groups first."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))


PREFECT = str(Path(sys.executable).with_name("prefect"))
"""The `prefect` CLI of the interpreter running the tests."""


# --- Prefect: one temporary API server for the whole session (it takes ~15 s to start) ---


@pytest.fixture(scope="session")
def prefect_api(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Path
) -> Iterator[None]:
    """A real, temporary Prefect API (SQLite) for the flows tests run in this process: a
    server of their own, so that no subprocess of another test (a killed machine's project
    slots, say) changes what they count. Prefect's test harness: a thread of a test, which
    starts without the settings' context, finds it too (as Prefect's ephemeral server). Its
    database starts as a copy of `migrated_database` (the harness makes it in `mkdtemp()`)."""
    from prefect.testing import utilities
    from prefect.testing.utilities import prefect_test_harness

    def seeded_directory() -> str:
        home = server_home(tmp_path_factory, "prefect-api", migrated_database, "prefect-test.db")
        return str(home)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utilities, "mkdtemp", seeded_directory)
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
def _no_window_records_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts without window records on the Prefect APIs it used. They are keyed by
    the job URL, and a new emulator may get the port of an earlier test's one: its records
    would make windows look started already."""
    yield
    urls = [
        request.getfixturevalue(name).api_url
        for name in ("prefect_server", "prefect_server_pg")
        if name in request.fixturenames
    ]
    if "prefect_api" in request.fixturenames:
        from prefect.settings import PREFECT_API_URL

        urls.append(str(PREFECT_API_URL.value()))
    for url in urls:
        _delete_window_records(url)


def _delete_window_records(api_url: str) -> None:
    """Delete every variable tagged `cml` (window records and claims) through the REST API,
    eight at a time (a 1,000-window backfill leaves 1,000; bounded; a reset connection is
    tried again)."""
    import httpx

    for _ in range(50):
        try:
            with httpx.Client(base_url=api_url, timeout=30) as http, ThreadPoolExecutor(8) as pool:
                page = http.post(
                    "/variables/filter",
                    json={"variables": {"tags": {"all_": ["cml"]}}, "limit": 200},
                ).json()
                names = [variable["name"] for variable in page]
                list(pool.map(lambda name: http.delete(f"/variables/name/{name}"), names))
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if not page:
            return
    pytest.fail(f"window records on {api_url} could not be deleted")


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
        """Point this test process's Prefect client at this server (not `prefect_api`'s), with
        fresh log and event workers on the way in and out: they keep the first API they
        reported to, so a later flow's events would go to this server and be dropped."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        flush_prefect_workers()
        try:
            with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
                yield
        finally:
            flush_prefect_workers()  # each worker keeps the API it started with


def flush_prefect_workers() -> None:
    """Send this process's queued logs and events now and stop their workers, so that the
    next ones start against the API then current."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def server_records(server: PrefectServer, job_url: str) -> dict[str, Any]:
    """The job's window records on `server` right now, by key (`WindowRecord`s, read as a
    rerun without Prefect reads them)."""
    from cml_tasks.job import JobRef
    from cml_tasks.prefect_rest import PrefectAPI, job_records

    found = job_records(PrefectAPI(server.api_url, {}), JobRef.parse(job_url), at_least=0)
    assert found is not None
    return found


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


def spawn(
    command: list[str], env: dict[str, str], log: Path, *, append: bool = False
) -> subprocess.Popen[bytes]:
    """Start a background process in its own session, its output going to `log` (after what
    it holds, with `append`)."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


QUIET_SERVICES = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "DB_VACUUM", "TRIGGERS")
}
"""Server services no test needs, off: each polls the database or reads every event, and a
dozen test servers on two cores add up. Tests create the scheduled flow runs they want (a
scheduler would also make runs for today from the deployments' cron schedules); the README's
automation is created, but no test needs it to fire."""


@contextmanager
def running_prefect_server(
    home: Path, startup_timeout: float = 90, *, ui: bool = False, **server_env: str
) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port with its own PREFECT_HOME `home` (its log is
    `home/server.log`), analytics off, the UI off unless `ui` (then served at the server's
    root, talking to this server's API), `server_env` added to its environment (e.g. a
    database URL; it may override those defaults); yields once `/api/health` answers, stops
    the server on exit (`kill_prefect_server` and `restart_prefect_server` meanwhile)."""
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home)
    # Task-run states unbatched (Prefect's default, not the demo's batches): tests read a flow
    # run's task runs as soon as it ends, and batches lag up to a second (a task run was seen
    # still under its first name).
    defaults = {
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **QUIET_SERVICES,
    }
    if ui:
        # The UI asks the API at PREFECT_UI_API_URL, by default port 4200 whatever --port says.
        defaults |= {"PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": server.api_url}
    env = server.env(**(defaults | server_env))
    env.pop("PREFECT_API_URL")
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    running = _ServerProcess(server, command, env, startup_timeout)
    _RUNNING[server.api_url] = running
    try:
        running.start()
        yield server
    finally:
        del _RUNNING[server.api_url]
        stop_process(running.process)


@dataclass
class _ServerProcess:
    """How a test server was started, so that it can be killed and started again."""

    server: PrefectServer
    command: list[str]
    env: dict[str, str]
    startup_timeout: float
    process: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> None:
        """Start the server (its log `home/server.log`, appended) and wait for `/api/health`."""
        import httpx

        log = self.server.home / "server.log"
        self.process = spawn(self.command, self.env, log, append=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"prefect server exited early:\n{log.read_text()[-3000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.server.api_url}/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server not healthy after {self.startup_timeout:g} s:\n"
                    f"{log.read_text()[-3000:]}"
                )
            time.sleep(0.3)


_RUNNING: dict[str, _ServerProcess] = {}


def kill_prefect_server(server: PrefectServer) -> None:
    """SIGKILL a server of `running_prefect_server` (and its children): no clean shutdown."""
    process = _RUNNING[server.api_url].process
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def restart_prefect_server(server: PrefectServer) -> None:
    """Start a killed server again: the same port, PREFECT_HOME and database."""
    _RUNNING[server.api_url].start()


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite database of Prefect's, migrated once per test run (by the first test
    process that needs it; the others wait on a lock) and copied for each SQLite test server:
    migrating a new database is half of what a server's start costs (4 of 8.5 s of CPU)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # the run's own
    database = shared / "prefect-migrated.db"
    with (shared / "prefect-migrated.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            home = shared / "prefect-migrated-home"
            env = {**os.environ, "PREFECT_HOME": str(home), **QUIET_SERVICES}
            upgrade = [PREFECT, "server", "database", "upgrade", "-y"]
            done = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            part = shared / "prefect-migrated.db.part"  # whole or absent: another may read it
            shutil.copyfile(home / "prefect.db", part)
            part.rename(database)
    return database


def server_home(
    tmp_path_factory: pytest.TempPathFactory, name: str, database: Path, file: str = "prefect.db"
) -> Path:
    """A new directory for a SQLite test server (its PREFECT_HOME, or the harness's database
    directory), holding a copy of `migrated_database` named `file`."""
    home = tmp_path_factory.mktemp(name)
    shutil.copyfile(database, home / file)
    return home


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Path
) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port, shared by the session; up in ~5 to 15 s."""
    home = server_home(tmp_path_factory, "prefect-server-home", migrated_database)
    with running_prefect_server(home) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest) -> PrefectServer:
    """The session's Prefect server, on each database: a test that takes it runs on both (a
    test file may define its own `server`, e.g. with the project's limit made roomy)."""
    name = "prefect_server_pg" if request.param == "postgresql" else "prefect_server"
    found: PrefectServer = request.getfixturevalue(name)
    return found


@pytest.fixture(scope="session")
def prefect_ui_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Path
) -> Iterator[PrefectServer]:
    """`prefect server start` with the UI enabled, for browser tests: the UI at the server's
    root (`ui_root(server)`), the API under `/api`. Its own server, so that what the browser
    shows is only what the browser tests made."""
    home = server_home(tmp_path_factory, "prefect-ui-server-home", migrated_database)
    with running_prefect_server(home, ui=True) as server:
        yield server


def ui_root(server: PrefectServer) -> str:
    """The root URL of a server's UI: `http://127.0.0.1:PORT`."""
    return server.api_url.removesuffix("/api")


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (`.ci/run` installs it): Playwright cannot download its own browsers."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium driven by Playwright (a `playwright.sync_api.Browser`), for one test
    module: ~1 s to launch. Not for the session: while Playwright's sync API is up, the main
    thread has a running asyncio loop, so Prefect's sync calls there (`flow()`, `Block.save`)
    would return coroutines; run flows in a worker thread while it is up, and tests of later
    modules run without it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed (no {CHROMIUM}): the browser tests drive the Prefect UI "
            "in it. .ci/run installs it; by hand: apt-get update -qq && "
            "apt-get install -y -qq chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


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


# --- PostgreSQL: a throwaway cluster for the session (Debian's packages; .ci/run installs them) ---


def _postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL's binaries (`/usr/lib/postgresql/<major>/bin`)."""
    found = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if path.parent.parent.name.isdigit() and (path.parent / "pg_ctl").exists()
    ]
    if not found:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb and pg_ctl): "
            "these tests run a Prefect server on it. .ci/run installs it; by hand: "
            "apt-get update -qq && apt-get install -y -qq postgresql"
        )
    return max(found, key=lambda bin_dir: int(bin_dir.parent.name))


def _as_postgres(command: list[str]) -> list[str]:
    """`command` run as the `postgres` user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run_postgres_tool(command: list[str], cwd: Path, log: Path | None = None) -> None:
    """Run a PostgreSQL tool as `postgres` in `cwd`; fail the session with its output."""
    done = subprocess.run(
        _as_postgres(command), cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        server_log = log.read_text()[-3000:] if log is not None and log.exists() else ""
        pytest.fail(
            f"{shlex.join(command)} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}{server_log}"
        )


@contextmanager
def running_postgres() -> Iterator[str]:
    """A PostgreSQL cluster of our own: initdb'd as `postgres` in a temporary directory, trust
    auth, listening on 127.0.0.1 only on a free port (its unix socket in that directory), with
    an empty database `prefect`; yields its SQLAlchemy URL
    (`postgresql+asyncpg://postgres@127.0.0.1:PORT/prefect`), stopped and removed on exit."""
    bin_dir = _postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="cml-prefect-pg-"))
    data, log = root / "data", root / "postgres.log"
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        if os.geteuid() == 0:
            try:
                postgres = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("no `postgres` user: reinstall Debian's postgresql (.ci/run does)")
            os.chown(root, postgres.pw_uid, postgres.pw_gid)
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        _run_postgres_tool([*initdb, "-E", "UTF8", "--locale=C", "--no-sync"], root)
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={shlex.quote(str(root))}"
        )
        start = [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
        _run_postgres_tool(start, root, log)
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        _run_postgres_tool([*createdb, "prefect"], root, log)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                cwd=root,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The session's own PostgreSQL (`running_postgres`): its SQLAlchemy URL. Fails (never
    skips) when PostgreSQL is missing: .ci/run installs it."""
    with running_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def prefect_server_pg(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServer]:
    """`prefect server start` whose database is the session's PostgreSQL (`postgres_url`), on
    a free port with its own PREFECT_HOME, shared by the session."""
    home = tmp_path_factory.mktemp("prefect-server-home-pg")
    with running_prefect_server(home, PREFECT_API_DATABASE_CONNECTION_URL=postgres_url) as server:
        yield server


MACHINE_LEASE_SECONDS = "30"
"""The claim lease of the tests' machines (`CML_CLAIM_LEASE_SECONDS`; 45 s in production): a
killed machine's windows come free after 30 s, while a renewal (every 10 s) still has 16 s to
get through a busy SQLite server, whose "database is locked" Prefect's client resends after
2, 4 and 8 s (15 s was seen to lose a claim on a loaded machine)."""


def machine_env(server: PrefectServer, root: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a subprocess on a separate "machine" `name` that talks to `server`:
    creates `root/name/{home,work,tmp}`; its own PREFECT_HOME (`home`) and TMPDIR (`tmp`),
    PREFECT_API_URL of `server`, analytics off, the claim lease `MACHINE_LEASE_SECONDS`; none of
    this process's `CML_*` or `PREFECT_*` variables, only `extra` (which may set any). Run the
    subprocess with `cwd=root/name/work`."""
    machine = root / name
    for part in ("home", "work", "tmp"):
        (machine / part).mkdir(parents=True, exist_ok=True)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("CML_", "PREFECT_"))
    }
    env.update(
        PREFECT_HOME=str(machine / "home"),
        TMPDIR=str(machine / "tmp"),
        PREFECT_API_URL=server.api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CML_CLAIM_LEASE_SECONDS=MACHINE_LEASE_SECONDS,
    )
    env.update(extra)
    return env


CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))
"""The `cml-jobs` command of the interpreter running the tests."""


def cml_jobs_on(
    server: PrefectServer, root: Path, machine: str, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """`cml-jobs args` as a user runs it, on the "machine" `machine` (`machine_env`, with
    `env` such as the CML keys) talking to `server`; its output captured."""
    return subprocess.run(
        [CML_JOBS, *args],
        env=machine_env(server, root, machine, **env),
        cwd=root / machine / "work",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def record_writes_refused() -> Iterator[None]:
    """Every update of a window record answered 500 by the Prefect API, as when a server
    fails to write it; everything else (a first claim's creation among it) passes through to
    the real servers. respx: a real server cannot fail one route on demand. A 500, because
    it is not a "not now" (SQLite's "database is locked" is a 503, sent again)."""
    import httpx
    import respx

    with respx.mock(assert_all_called=False) as api:
        refused = httpx.Response(500, json={"exception_message": "Internal Server Error"})
        api.patch(url__regex=r".*/api/variables/name/cml-(?!claim-).*").mock(return_value=refused)
        api.route().pass_through()
        yield
