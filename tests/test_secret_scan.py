"""The secret scan: recognisable API keys go through every command, flow and failure path, then
every output and everything the Prefect server stored is searched for them. Zero hits.

The keys are of valid shapes (v1: 32 characters, v2: 64) and made of a marker (`v1SECRET`,
`v2SECRET`, `v1WRONGKEY`, `v2WRONGKEY`) repeated, so that a key cut short still shows. Each is
searched for raw (any case), as its marker, and base64-encoded at every byte alignment (Basic
auth sends `key:` in base64).

What is scanned (with `-s`, the bytes of each kind are printed):
- stdout and stderr of every `cml-jobs` subprocess (start, start --wait, runs, stop, windows,
  backfill with and without --follow, records; 401 with a wrong key, 500 on start, a lost
  answer, a failing CML run);
- the Python logging of the in-process flows (caplog, root at DEBUG so httpx and httpcore
  speak too) and this process's stdout/stderr (capfd);
- from the Prefect server the flows used: logs, artifacts, events, flow runs (parameters,
  states and every state in their history), task runs (and every state), variables (the
  window records), block documents (a `CMLCredentials` block: its keys read back as
  `********`), deployments, concurrency limits; then the server's SQLite database and log,
  and every file the "machines" and this process left in their Prefect homes and temp dirs.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import date
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import prefect.main  # noqa: F401  (now: its logging setup would drop caplog's handler in the test)
import pytest
from conftest import PREFECT, PrefectServer, machine_env, spawn, stop_process

from cml_tasks.emulator import Emulator, EmulatorConfig, Fault, UserConfig, default_config

REPOSITORY = Path(__file__).resolve().parents[1]
CML_JOBS = str(Path(sys.executable).with_name("cml-jobs"))

V1 = "v1SECRET" * 4
V2 = "v2SECRET" * 8
WRONG_V1 = "v1WRONGKEY" * 3 + "v1"
WRONG_V2 = "v2WRONGKEY" * 6 + "v2v2"
SECRETS = {"v1": V1, "v2": V2, "wrong v1": WRONG_V1, "wrong v2": WRONG_V2}
MARKERS = ("v1SECRET", "v2SECRET", "v1WRONGKEY", "v2WRONGKEY")
BLOCK = "secret-scan"
MASK = "********"
PERSIST = {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
"""Every task and flow result written to the machine's storage (scanned with its files)."""


def _config() -> EmulatorConfig:
    """The default world (jobs 208 ok, 209 failing, 211 long), alice with our keys, fast runs."""
    base = default_config(time_scale=0.2).model_dump()
    alice = UserConfig(
        username="alice", name="Alice Example", email="alice@example.com", v1_key=V1, v2_key=V2
    )
    bob = base["users"][1]
    return EmulatorConfig.model_validate({**base, "users": [alice.model_dump(), bob]})


def _base64_forms(text: str) -> set[str]:
    """`text` as it shows inside any base64 string, whatever bytes come before and after it:
    the characters fully determined by its own bytes, at each of the three alignments."""
    forms: set[str] = set()
    for pad in range(3):
        raw = b"\0" * pad + text.encode()
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(raw).decode().rstrip("=")
            first = 4 if pad else 0  # the group holding the padding bytes is mixed
            whole = (len(raw) // 3) * 4  # the last full group; after it the tail is mixed
            forms.add(encoded[first:whole])
    return {form for form in forms if len(form) >= 16}


def _needles() -> dict[str, tuple[bytes, bool]]:
    """Name -> (bytes, case-insensitive)."""
    needles: dict[str, tuple[bytes, bool]] = {}
    for name, key in SECRETS.items():
        needles[name] = (key.lower().encode(), True)
        for text in (key, f"{key}:"):
            for i, form in enumerate(sorted(_base64_forms(text))):
                needles[f"{name} base64 {'with :' if text.endswith(':') else ''} #{i}"] = (
                    form.encode(),
                    False,
                )
    for marker in MARKERS:
        needles[f"marker {marker}"] = (marker.lower().encode(), True)
        for i, form in enumerate(sorted(_base64_forms(marker * 2))):
            needles[f"marker {marker} base64 #{i}"] = (form.encode(), False)
    return needles


class Scan:
    """What was collected, by kind, and the search."""

    def __init__(self) -> None:
        self.kinds: dict[str, list[tuple[str, bytes]]] = {}

    def add(self, kind: str, where: str, data: bytes | str) -> None:
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        self.kinds.setdefault(kind, []).append((where, blob))

    def hits(self) -> list[str]:
        needles = _needles()
        found: list[str] = []
        for kind, items in self.kinds.items():
            for where, blob in items:
                lowered = blob.lower()
                for name, (needle, any_case) in needles.items():
                    at = (lowered if any_case else blob).find(needle)
                    if at >= 0:
                        context = blob[max(0, at - 80) : at + len(needle) + 80]
                        found.append(f"{kind} / {where}: {name}: ...{context!r}...")
        return found

    def report(self) -> str:
        lines = ["secret scan: bytes scanned by kind"]
        for kind, items in self.kinds.items():
            size = sum(len(blob) for _, blob in items)
            lines.append(f"  {kind:<34} {size:>12,} bytes in {len(items)} item(s)")
        total = sum(len(blob) for items in self.kinds.values() for _, blob in items)
        lines.append(f"  {'total':<34} {total:>12,} bytes; needles: {len(_needles())}")
        return "\n".join(lines)


# --- running things -----------------------------------------------------------------------


class Machine:
    """`cml-jobs` on a "machine" of its own, pointed at the Prefect server; output collected."""

    def __init__(self, server: PrefectServer, root: Path, scan: Scan, prefix: str) -> None:
        self.server, self.root, self.scan, self.prefix = server, root, scan, prefix
        self.count = 0

    def run(self, code: int, *args: str, keys: dict[str, str] | None = None) -> str:
        self.count += 1
        name = f"{self.prefix}{self.count}"
        given = {"CML_API_KEY": V1, "CML_API_V2_KEY": V2} if keys is None else keys
        env = machine_env(self.server, self.root, name, CML_TIMEOUT="5", **PERSIST, **given)
        done = subprocess.run(
            [CML_JOBS, *args],
            cwd=self.root / name / "work",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = " ".join(a for a in args if not a.startswith("http"))
        self.scan.add("cli stdout", shown, done.stdout)
        self.scan.add("cli stderr", shown, done.stderr)
        assert done.returncode == code, (
            f"cml-jobs {shown}: {done.returncode}\n{done.stderr[-3000:]}"
        )
        return done.stdout


def _block(flow: Any) -> dict[str, Any]:
    """The saved block as the flow takes it: the block itself, or its name."""
    from cml_tasks.prefect.blocks import CMLCredentials

    if "credentials" in inspect.signature(flow.fn).parameters:
        return {"credentials": CMLCredentials.load(BLOCK)}
    return {"credentials_block": BLOCK}


def _flows(cml: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flows in this process: window runs (environment, block, failures) and backfills."""
    from cml_tasks.prefect import tasks
    from cml_tasks.prefect.backfill import cml_backfill
    from cml_tasks.prefect.blocks import CMLCredentials
    from cml_tasks.prefect.naming import OUTCOME_UNKNOWN_STATE
    from cml_tasks.prefect.window_run import cml_window_run

    ok = cml.job_url("alice", "risk-analysis", "208")
    failing = cml.job_url("alice", "risk-analysis", "209")
    monkeypatch.setenv("CML_API_KEY", V1)
    monkeypatch.setenv("CML_API_V2_KEY", V2)
    tasks.shared_poller.cache_clear()

    def backfill(job: str, start: date, end: date, **options: Any) -> Any:
        return cml_backfill(
            job=job, start=start, end=end, project_limit=0, return_state=True, **options
        )

    assert cml_window_run(job=ok, window_start=date(2015, 1, 1), return_state=True).is_completed()
    state = cml_window_run(
        job=ok, window_start=date(2015, 2, 1), return_state=True, **_block(cml_window_run)
    )
    assert state.is_completed(), state.message
    if "credentials" in inspect.signature(cml_backfill.fn).parameters:  # a block parameter
        unsaved = CMLCredentials(api_key=V1, api_v2_key=V2)
        state = backfill(ok, date(2015, 7, 1), date(2015, 7, 31), credentials=unsaved)
        assert state.is_completed(), state.message
        state = backfill(ok, date(2015, 12, 1), date(2015, 12, 31), **_block(cml_backfill))
        assert state.is_completed(), state.message
    assert backfill(ok, date(2015, 3, 1), date(2015, 4, 30)).is_completed()
    followed = backfill(ok, date(2015, 5, 1), date(2015, 6, 30), follow=True, poll_interval=0.2)
    assert followed.is_completed(), followed.message
    run_failed = backfill(
        failing, date(2015, 1, 1), date(2015, 1, 31), follow=True, poll_interval=0.2
    )
    assert run_failed.is_failed(), run_failed

    # Failures: outcome unknown without the v2 key (a 500, a lost answer), a wrong key.
    monkeypatch.delenv("CML_API_V2_KEY")
    cml.inject(Fault(endpoint="v1.start", kind="500", times=1))
    state = cml_window_run(job=ok, window_start=date(2015, 8, 1), return_state=True)
    assert state.name == OUTCOME_UNKNOWN_STATE, state
    cml.inject(Fault(endpoint="v1.start", kind="lost_answer", times=1))
    assert backfill(ok, date(2015, 9, 1), date(2015, 9, 30)).is_failed()
    cml.clear_faults()
    monkeypatch.setenv("CML_API_KEY", WRONG_V1)
    assert backfill(ok, date(2015, 11, 1), date(2015, 11, 30)).is_failed()
    tasks.shared_poller.cache_clear()


def _commands(cml: Emulator, machine: Machine) -> None:
    """Every command, on a fresh machine each."""
    ok = cml.job_url("alice", "risk-analysis", "208")
    long = cml.job_url("alice", "risk-analysis", "211")
    run = machine.run
    run(0, "start", ok, "-e", "START_DATE=2016-01-01")
    run(0, "start", ok, "-e", "CASE=wait", "--wait", "--poll", "1s", "--json")
    run(0, "runs", ok, "--json")
    engine = json.loads(run(0, "start", long, "--json"))["engine_id"]
    run(0, "stop", long, engine)
    run(0, "windows", "--from", "2016-01-01", "--to", "2016-03-31")
    run(0, "backfill", ok, "--from", "2016-02-01", "--to", "2016-03-31")
    follow = ["--follow", "--poll", "1s", "--json"]
    run(0, "backfill", ok, "--from", "2016-04-01", "--to", "2016-05-31", *follow)
    run(0, "records", ok, "--json")


def _failing_commands(cml: Emulator, machine: Machine) -> None:
    """The failure paths: 401 (v1, v2), 500 on start, lost answers, a failing CML run."""
    ok = cml.job_url("alice", "risk-analysis", "208")
    failing = cml.job_url("alice", "risk-analysis", "209")
    run = machine.run
    run(3, "start", ok, keys={"CML_API_KEY": WRONG_V1})
    run(3, "runs", ok, keys={"CML_API_KEY": V1, "CML_API_V2_KEY": WRONG_V2})
    cml.inject(Fault(endpoint="v1.start", kind="500", times=1))
    run(7, "start", ok, "-e", "CASE=500")
    cml.inject(Fault(endpoint="v1.start", kind="lost_answer", times=1))
    run(0, "start", ok, "-e", "CASE=lost-adopted", "--wait", "--poll", "1s")
    cml.inject(Fault(endpoint="v1.start", kind="lost_answer", times=1))
    v1_only = {"CML_API_KEY": V1}
    run(7, "backfill", ok, "--from", "2016-08-01", "--to", "2016-08-31", keys=v1_only)
    run(10, "start", failing, "--wait", "--poll", "1s")
    follow = ["--follow", "--poll", "1s"]
    run(1, "backfill", failing, "--from", "2016-01-01", "--to", "2016-01-31", *follow)


DISPATCH = """
import inspect, sys
from datetime import date
from cml_tasks.prefect.backfill import cml_backfill
from cml_tasks.prefect.blocks import CMLCredentials
if "credentials" in inspect.signature(cml_backfill.fn).parameters:
    block = {"credentials": CMLCredentials.load(sys.argv[3])}
else:
    block = {"credentials_block": sys.argv[3]}
state = cml_backfill(job=sys.argv[1], start=date(2014, 1, 1), end=date(2014, 1, 31),
                     scale_out=True, deployment=sys.argv[2], return_state=True, **block)
print(state.result().summary())
"""
"""A scale-out dispatch with the saved block: the worker's window run reads the keys from it."""


def _scale_out(cml: Emulator, server: PrefectServer, root: Path, scan: Scan) -> None:
    """A scale-out backfill (one window) with the saved block: deploy `monthly`, dispatch, a
    worker runs the window's flow run; no machine has a key in its environment."""
    from test_backfill_scale_out import DEPLOYMENT, MONTHLY, _wait_for_runs

    url = cml.job_url("alice", "risk-analysis", "208")
    env = machine_env(  # no CML key anywhere on this machine: only in the saved block
        server, root, "worker", CML_JOB_URL=url, PREFECT_WORKER_QUERY_SECONDS="1", **PERSIST
    )
    log = root / "worker.log"
    worker = spawn([PREFECT, "worker", "start", "--pool", "cml-process"], env, log)
    try:
        for name, command, cwd in (
            (
                "prefect deploy",
                [
                    PREFECT,
                    "--no-prompt",
                    "deploy",
                    "--prefect-file",
                    "deployments/prefect.yaml",
                    *MONTHLY,
                ],
                REPOSITORY,
            ),
            (
                "scale-out dispatch",
                [sys.executable, "-c", DISPATCH, url, DEPLOYMENT, BLOCK],
                root / "worker" / "work",
            ),
        ):
            done = subprocess.run(
                command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
            )
            scan.add("cli stdout", name, done.stdout)
            scan.add("cli stderr", name, done.stderr)
            assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "1 dispatched" in done.stdout, done.stdout
        _wait_for_runs(cml, 1, log)
        time.sleep(2)  # the flow run reports its end
    finally:
        stop_process(worker)
        scan.add("worker output", "prefect worker", log.read_bytes())


# --- reading back what Prefect stored ------------------------------------------------------


def _paged(http: httpx.Client, path: str, body: dict[str, Any] | None = None) -> list[bytes]:
    """Every page of a `.../filter` listing (offset paging), as the raw bodies."""
    pages: list[bytes] = []
    offset = 0
    while True:
        answer = http.post(path, json={**(body or {}), "limit": 200, "offset": offset})
        answer.raise_for_status()
        items = answer.json()
        pages.append(answer.content)
        if len(items) < 200:
            return pages
        offset += 200


def _read_back(server: PrefectServer, scan: Scan) -> dict[str, Any]:
    """Everything the Prefect API shows, added to the scan; returns the block documents."""
    with httpx.Client(base_url=server.api_url, timeout=60) as http:
        for kind, path in (
            ("api logs", "/logs/filter"),
            ("api artifacts", "/artifacts/filter"),
            ("api variables", "/variables/filter"),
            ("api deployments", "/deployments/filter"),
            ("api work pools", "/work_pools/filter"),
        ):
            for page in _paged(http, path):
                scan.add(kind, path, page)
        for page in _paged(http, "/v2/concurrency_limits/filter"):
            scan.add("api concurrency limits", "/v2/concurrency_limits/filter", page)
        blocks = http.post("/block_documents/filter", json={"include_secrets": False})
        blocks.raise_for_status()
        scan.add("api block documents", "/block_documents/filter", blocks.content)
        for kind, path, states in (
            ("api flow runs", "/flow_runs/filter", "/flow_run_states/?flow_run_id="),
            ("api task runs", "/task_runs/filter", "/task_run_states/?task_run_id="),
        ):
            for page in _paged(http, path):
                scan.add(kind, path, page)
                for item in json.loads(page):
                    history = http.get(states + item["id"])
                    history.raise_for_status()
                    scan.add(f"{kind}: state history", item["id"], history.content)
        page = http.post("/events/filter", json={"limit": 50})
        while True:
            page.raise_for_status()
            scan.add("api events", "/events/filter", page.content)
            following = page.json().get("next_page")
            if not following:
                break
            page = http.get(following)
    return {"block_documents": blocks.json()}


def _event_count(server: PrefectServer) -> int:
    answer = httpx.post(f"{server.api_url}/events/filter", json={"limit": 1}, timeout=30)
    return int(answer.json()["total"])


def _files(scan: Scan, kind: str, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        scan.add(kind, str(path.relative_to(root)), path.read_bytes())


# --- the test -------------------------------------------------------------------------------


def _emulators() -> Iterator[Emulator]:
    while True:
        yield Emulator(_config())


def test_the_scan_finds_a_key_in_every_form_it_can_travel_in() -> None:
    """The scanner itself: a Basic auth header, a Bearer header, a key cut short, any case."""
    for key in (V1, V2, WRONG_V1, WRONG_V2):
        for form in (
            httpx.BasicAuth(key, "")._auth_header,
            f"Authorization: Bearer {key}",
            json.dumps({"a": base64.b64encode(f"x{key}:".encode()).decode()}),
            key.upper(),
            key[:12] + "...",
        ):
            scan = Scan()
            scan.add("control", "form", f"before {form} after")
            assert scan.hits(), form
    clean = Scan()
    clean.add(
        "control",
        "clean",
        "Basic " + base64.b64encode(b"uysgxtj7jzkps96njextnxxmq05usp0b:").decode(),
    )
    assert clean.hits() == []


@pytest.mark.usefixtures("process_pool", "no_retry_waits")
def test_no_key_in_any_output_or_stored_state(
    prefect_server: PrefectServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    import os

    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    scan = Scan()
    began = time.monotonic()
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]:
        # caplog gets the same records; printing thousands of DEBUG lines would only be slow
        root.removeHandler(handler)
        request.addfinalizer(lambda handler=handler: root.addHandler(handler))  # type: ignore[misc]
    events_before = _event_count(prefect_server)
    with prefect_server.as_current_api():
        from cml_tasks.prefect.blocks import CMLCredentials

        CMLCredentials(api_key=V1, api_v2_key=V2).save(BLOCK, overwrite=True)
    timings: dict[str, float] = {}

    def timed(name: str, work: Any, *args: Any) -> None:
        start = time.monotonic()
        work(*args)
        timings[name] = time.monotonic() - start

    with ExitStack() as stack, ThreadPoolExecutor(3) as pool:
        flows, commands, failing, scale_out = (
            stack.enter_context(emulator) for emulator in islice(_emulators(), 4)
        )
        flows_url = flows.url
        background = [
            pool.submit(
                timed,
                "commands",
                _commands,
                commands,
                Machine(prefect_server, tmp_path, scan, "cli"),
            ),
            pool.submit(
                timed,
                "failure paths",
                _failing_commands,
                failing,
                Machine(prefect_server, tmp_path, scan, "failing"),
            ),
            pool.submit(timed, "scale-out", _scale_out, scale_out, prefect_server, tmp_path, scan),
        ]
        with (
            prefect_server.as_current_api(),
            temporary_settings(
                updates={
                    PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
                    PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results",
                }
            ),
        ):
            timed("in-process flows", _flows, flows, monkeypatch)
        for future in background:
            future.result()
    scan.add("python logging (caplog)", "records", caplog.text)
    assert len(caplog.records) > 100, "caplog saw too little"
    for record in caplog.records:  # what a structured handler would ship: args, extras
        scan.add("python logging (caplog)", record.name, repr(record.__dict__))
    out, err = capfd.readouterr()
    scan.add("this process stdout/stderr", "capfd", out + err)

    # The server persists events in batches (every 5 s): wait until the count settles.
    read_back = time.monotonic()
    deadline = read_back + 20
    count = _event_count(prefect_server)
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = _event_count(prefect_server)
        if now == count and now > events_before:
            break
        count = now
    stored = _read_back(prefect_server, scan)
    _files(scan, "server home (database, log)", prefect_server.home)
    _files(scan, "machines (homes, work, tmp), results", tmp_path)
    assert list((tmp_path / "results").iterdir()), "no result was persisted"
    _files(scan, "this process's PREFECT_HOME", Path(os.environ["PREFECT_HOME"]))

    blocks = [b for b in stored["block_documents"] if b.get("name") == BLOCK]
    assert len(blocks) == 1, stored
    assert blocks[0]["data"]["api_key"] == MASK
    assert blocks[0]["data"]["api_v2_key"] == MASK
    seen = {kind: b"".join(blob for _, blob in items) for kind, items in scan.kinds.items()}
    for kind in ("api logs", "api artifacts", "api events", "api task runs", "api variables"):
        assert b"risk-analysis" in seen[kind], kind  # our runs are in what was read
    assert b"cml.run.failed" in seen["api events"]
    for kind in ("api logs", "api events"):  # the in-process flows' too
        assert flows_url.encode() in seen[kind], kind
    assert b"risk-analysis/208 2015-" in seen["api task runs"]  # their windows are in 2015

    hits = scan.hits()
    timings["read back and scan"] = time.monotonic() - read_back
    print()
    print(scan.report())
    print("  timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    print(f"  test: {time.monotonic() - began:.1f} s")
    assert hits == [], "\n".join(hits[:20])
