"""Running the emulator: in a background thread for tests (:class:`Emulator`), or in the
foreground for the CLI (:func:`serve`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ._app import build_app
from ._config import EmulatorConfig, Outcome, OutcomeRule, default_config
from ._faults import Fault
from ._state import EmulatorState, RequestRecord, RunRecord

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class Emulator:
    """A real CML HTTP server on a local port, seeded from ``config`` (or :func:`default_config`).

    ``port=0`` picks a free port. Use as a context manager, or call :meth:`start`/:meth:`stop`.
    Runs, requests and faults persist across a stop and a new start. With ``ssl_certfile`` and
    ``ssl_keyfile`` (PEM) it serves HTTPS, to test clients' certificate handling.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.config = config if config is not None else default_config()
        self.host = host
        self._port = port
        self._tls = _TLS(ssl_certfile, ssl_keyfile)
        self._state = EmulatorState(self.config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; the v1 and v2 API paths hang off it."""
        if self._url is None:
            raise RuntimeError("the emulator is not running: call start() or use `with`")
        return self._url

    def job_url(self, username: str, project_name: str, job_id: str) -> str:
        """The job's Overview page URL, the form the Cloudera docs derive API paths from."""
        return f"{self.url}/{username}/{project_name}/jobs/{job_id}"

    def runs(self) -> list[RunRecord]:
        """Every run started (v1 and v2), oldest first: same as ``GET /_emulator/runs``."""
        return self._state.run_records()

    def requests(self) -> list[RequestRecord]:
        """Every request seen, oldest first: same as ``GET /_emulator/requests``."""
        return self._state.request_records()

    def inject(self, fault: Fault) -> None:
        """Add a fault; its ``calls`` count calls to its endpoint from now on."""
        self._state.faults.add(fault)

    def clear_faults(self) -> None:
        self._state.faults.clear()

    def set_outcomes(
        self,
        job_id: str,
        rules: Sequence[OutcomeRule] = (),
        *,
        outcome: Outcome | None = None,
        project_id: str | None = None,
    ) -> None:
        """Change how job ``job_id``'s next runs end, e.g. to "fix" a failing job and rerun.

        ``rules`` and ``outcome`` replace the config's ``outcomes`` and ``outcome`` (``None``:
        keep the config's); runs already started keep their outcome. ``project_id`` picks the
        job when its id is in several projects; an unknown job is a :class:`ValueError`.
        """
        self._state.set_outcomes(job_id, rules, outcome, project_id)

    def start(self) -> Emulator:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        sock = _bind(self.host, self._port)
        server = uvicorn.Server(_uvicorn_config(self._state, foreground=False, tls=self._tls))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cml-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the CML emulator failed to start (see the log above)")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        self._url = _base_url(self.host, sock.getsockname()[1], https=self._tls.enabled)
        return self

    def stop(self) -> None:
        """Stop serving (open requests get a second to finish); a no-op if not running."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        self._server = self._thread = None
        self._url = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    host: str,
    port: int,
    config: EmulatorConfig,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Serve in the foreground until interrupted (Ctrl+C), after printing where and as whom."""
    tls = _TLS(ssl_certfile, ssl_keyfile)
    state = EmulatorState(config)
    sock = _bind(host, port)
    print(_banner(_base_url(host, sock.getsockname()[1], https=tls.enabled), config), flush=True)
    uvicorn.Server(_uvicorn_config(state, foreground=True, tls=tls)).run(sockets=[sock])


class _TLS:
    """The certificate and key to serve HTTPS with; both or neither."""

    def __init__(self, certfile: str | None, keyfile: str | None) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")
        self.certfile = certfile
        self.keyfile = keyfile

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


def _uvicorn_config(state: EmulatorState, foreground: bool, tls: _TLS) -> uvicorn.Config:
    """In the foreground, uvicorn's own access log; in a host process, its logging left alone."""
    return uvicorn.Config(
        build_app(state),
        lifespan="off",
        log_level="info" if foreground else "warning",
        log_config=LOGGING_CONFIG if foreground else None,
        server_header=False,
        timeout_graceful_shutdown=1,
        ssl_certfile=tls.certfile,
        ssl_keyfile=tls.keyfile,
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind and listen before the server starts, so the port is known and connections queue.

    ``IPPROTO_TCP`` explicitly: asyncio only disables Nagle on sockets that say so, and without
    it every keep-alive answer waits ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _base_url(host: str, port: int, *, https: bool = False) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    scheme = "https" if https else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _banner(url: str, config: EmulatorConfig) -> str:
    lines = [
        f"CML emulator listening on {url}",
        f"  API v1: POST {url}/api/v1/projects/<USERNAME>/<PROJECT_NAME>/jobs/<JOB_ID>/start"
        '  (--user "<v1 key>:")',
        f"  API v2: {url}/api/v2  (Authorization: Bearer <v2 key>)",
        f"  admin:  {url}/_emulator/runs  {url}/_emulator/requests",
        "Users (keys come from the emulator config; these are demo keys, not secrets):",
    ]
    for user in config.users:
        lines.append(f"  {user.username} ({user.name})  v1 key {user.v1_key}  v2 key {user.v2_key}")
    lines.append("Jobs (Overview page URLs):")
    for project in config.projects:
        lines.append(f"  {project.owner}/{project.name}  (v2 project id {project.id})")
        for job in project.jobs:
            lines.append(f"    {url}/{project.owner}/{project.name}/jobs/{job.id}  {job.name}")
    return "\n".join(lines)
