"""The CML emulator over real sockets: API v1 as Cloudera documents it, API v2 per the swagger
spec, fault injection, admin views and config loading."""

from __future__ import annotations

import base64
import json
import random
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cml_tasks.emulator import (
    DEFAULT_PROJECT_ID,
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    ConfigError,
    Emulator,
    EmulatorConfig,
    Fault,
    OutcomeRule,
    default_config,
    load_config,
)

BOB = default_config().users[1]
BOB_PROJECT_ID = default_config().projects[1].id
START_208 = "/api/v1/projects/alice/risk-analysis/jobs/208/start"
JOBS = f"/api/v2/projects/{DEFAULT_PROJECT_ID}/jobs"
ALICE = {"Authorization": f"Bearer {DEFAULT_V2_KEY}"}
JSON = {"Content-Type": "application/json"}
ENGINE_ID = re.compile(r"^[a-z0-9]{16}$")
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
JOB_RUN_FIELDS = {
    "id",
    "project_id",
    "job_id",
    "status",
    "created_at",
    "scheduling_at",
    "starting_at",
    "running_at",
    "finished_at",
    "kernel",
    "cpu",
    "memory",
    "nvidia_gpu",
    "arguments",
    "environment",
    "creator",
    "runtime_identifier",
}
TERMINAL = {
    "ENGINE_SUCCEEDED",
    "ENGINE_FAILED",
    "ENGINE_TIMEDOUT",
    "ENGINE_SKIPPED",
    "ENGINE_STOPPED",
}


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    """One fast emulator for the module (job 208 finishes in ~0.07 s, job 211 runs 3 s)."""
    with Emulator(default_config(time_scale=0.05)) as emu:
        yield emu


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    yield shared_emulator
    shared_emulator.clear_faults()


@pytest.fixture
def fresh() -> Iterator[Emulator]:
    """An emulator of its own, for tests that count every run or request."""
    with Emulator(default_config(time_scale=0.05)) as emu:
        yield emu


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=5) as c:
        yield c


def basic(key: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{key}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def start_v1(client: httpx.Client, body: Any = None, path: str = START_208) -> httpx.Response:
    return client.post(path, headers={**basic(DEFAULT_V1_KEY), **JSON}, json=body)


def create_run(client: httpx.Client, job_id: str = "208", body: Any = None) -> dict[str, Any]:
    response = client.post(
        f"{JOBS}/{job_id}/runs", headers=ALICE, json={} if body is None else body
    )
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def get_run(client: httpx.Client, run_id: str, job_id: str = "208") -> dict[str, Any]:
    response = client.get(f"{JOBS}/{job_id}/runs/{run_id}", headers=ALICE)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def assert_v2_error(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "code", "message", "details"}
    assert body["code"] == code
    assert body["details"] == []
    assert body["message"]


def run_ids(emu: Emulator) -> set[str]:
    return {r["id"] for r in emu.runs()}


# --- API v1: the documented examples -----------------------------------------------------------


def test_v1_curl_example_verbatim(emu: Emulator) -> None:
    command = textwrap.dedent("""\
        curl -v -XPOST http://cdsw.example.com/api/v1/projects/alice/risk-analysis/jobs/208/start      \\
        --user "uysgxtj7jzkps96njextnxxmq05usp0b:" --header "Content-type: application/json"           \\
        --data '{"environment": {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}}'
        """).replace("http://cdsw.example.com", emu.url)  # noqa: E501 (the doc's text, verbatim)
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10)

    assert done.returncode == 0, done.stderr
    assert "> Authorization: Basic dXlzZ3h0ajdqemtwczk2bmpleHRueHhtcTA1dXNwMGI6" in done.stderr
    assert "< HTTP/1.1 200 OK" in done.stderr
    assert "< content-type: application/json; charset=utf-8" in done.stderr.lower()
    engine_id = json.loads(done.stdout)["engine_id"]
    assert ENGINE_ID.match(engine_id)
    [run] = [r for r in emu.runs() if r["id"] == engine_id]
    assert run["api"] == "v1"
    assert run["username"] == "alice"
    assert run["project"] == "risk-analysis"
    assert run["environment"] == {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


def test_v1_curl_sample_request_with_empty_body(emu: Emulator) -> None:
    command = textwrap.dedent("""\
        curl -v -XPOST http://cdsw.example.com/api/v1/projects/alice/risk-analysis/jobs/208/start    \\
        --user "<API_KEY>:" --header "Content-type: application/json"
        """)  # noqa: E501 (the doc's text, verbatim)
    command = command.replace("http://cdsw.example.com", emu.url).replace(
        "<API_KEY>", DEFAULT_V1_KEY
    )
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10)

    assert done.returncode == 0, done.stderr
    engine_id = json.loads(done.stdout)["engine_id"]
    assert ENGINE_ID.match(engine_id)
    assert engine_id in run_ids(emu)


def test_v1_curl_without_content_type_is_refused(emu: Emulator) -> None:
    """The doc's first form lacks the header its own note says is required."""
    documented = 'curl -v -XPOST http://cdsw.example.com/api/v1/<path_to_job> --user "<API_KEY>:"'
    command = (
        documented.replace("curl -v", 'curl -s -w "\\n%{http_code}"')
        .replace("http://cdsw.example.com", emu.url)
        .replace("<path_to_job>", START_208.removeprefix("/api/v1/"))
        .replace("<API_KEY>", DEFAULT_V1_KEY)
    )
    before = run_ids(emu)
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10)

    body, status = done.stdout.rsplit("\n", 1)
    assert status == "415"
    assert "Content-Type" in json.loads(body)["message"]
    assert run_ids(emu) == before


def test_v1_python_requests_example_ported_to_python3(emu: Emulator, tmp_path: Path) -> None:
    example = textwrap.dedent("""\
        # example.py

        import requests
        import json

        HOST = "http://cdsw.example.com"
        USERNAME = "alice"
        API_KEY = "uysgxtj7jzkps96njextnxxmq05usp0b"
        PROJECT_NAME = "risk-analysis"
        JOB_ID = "208"

        url = "/".join([HOST, "api/v1/projects", USERNAME, PROJECT_NAME, "jobs", JOB_ID, "start"])
        job_params = {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}
        res = requests.post(
            url,
            headers = {"Content-Type": "application/json"},
            auth = (API_KEY,""),
            data = json.dumps({"environment": job_params})
        )

        print("URL", url)
        print("HTTP status code", res.status_code)
        print("Engine ID", res.json().get('engine_id'))
        """).replace("http://cdsw.example.com", emu.url)
    script = tmp_path / "example.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)

    assert done.returncode == 0, done.stderr
    url_line, status_line, engine_line = done.stdout.splitlines()
    assert url_line == f"URL {emu.url}/api/v1/projects/alice/risk-analysis/jobs/208/start"
    assert status_line == "HTTP status code 200"
    engine_id = engine_line.removeprefix("Engine ID ")
    assert ENGINE_ID.match(engine_id)
    [run] = [r for r in emu.runs() if r["id"] == engine_id]
    assert run["environment"] == {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


# --- API v1: errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(JSON, 401, id="no-auth"),
        pytest.param({**JSON, **basic("wrongkey")}, 401, id="wrong-key"),
        pytest.param({**JSON, **basic(DEFAULT_V2_KEY)}, 401, id="v2-key"),
        pytest.param({**JSON, **basic(DEFAULT_V1_KEY, "secret")}, 401, id="non-empty-password"),
        pytest.param({**JSON, "Authorization": "Basic %%%notbase64"}, 401, id="malformed"),
        pytest.param({**JSON, "Authorization": f"Bearer {DEFAULT_V1_KEY}"}, 401, id="bearer"),
        pytest.param(basic(DEFAULT_V1_KEY), 415, id="no-content-type"),
        pytest.param({**basic(DEFAULT_V1_KEY), "Content-Type": "text/plain"}, 415, id="text-plain"),
    ],
)
def test_v1_auth_and_content_type_errors(
    emu: Emulator, client: httpx.Client, headers: dict[str, str], status: int
) -> None:
    before = run_ids(emu)
    response = client.post(START_208, headers=headers)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert isinstance(response.json()["message"], str)
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Basic realm="')
    assert run_ids(emu) == before


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [
        (START_208, BOB.v1_key, 403),
        ("/api/v1/projects/bob/bob-sandbox/jobs/301/start", DEFAULT_V1_KEY, 403),
        ("/api/v1/projects/carol/risk-analysis/jobs/208/start", DEFAULT_V1_KEY, 404),
        ("/api/v1/projects/alice/no-such-project/jobs/208/start", DEFAULT_V1_KEY, 404),
        ("/api/v1/projects/alice/risk-analysis/jobs/999/start", DEFAULT_V1_KEY, 404),
    ],
    ids=["bob-on-alice", "alice-on-bob", "unknown-user", "unknown-project", "unknown-job"],
)
def test_v1_access_errors(
    emu: Emulator, client: httpx.Client, path: str, key: str, status: int
) -> None:
    before = run_ids(emu)
    response = client.post(path, headers={**basic(key), **JSON})

    assert response.status_code == status
    assert response.json()["message"]
    assert run_ids(emu) == before


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"environment"',
        b'{"environment": ["A"]}',
        b'{"environment": null}',
        b'{"environment": {"A": 1}}',
        b'{"environment": {"A": null}}',
        b'{"environment": {"1ABC": "x"}}',
        b'{"environment": {"A-B": "x"}}',
        b'{"environment": {"A\\n": "x"}}',
        b"\xff\xfe",
    ],
)
def test_v1_bad_bodies_are_400(emu: Emulator, client: httpx.Client, body: bytes) -> None:
    before = run_ids(emu)
    response = client.post(START_208, headers={**basic(DEFAULT_V1_KEY), **JSON}, content=body)

    assert response.status_code == 400
    assert response.json()["message"]
    assert run_ids(emu) == before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b""),
        ("application/json; charset=utf-8", b"{}"),
        ("Application/JSON", b"  \n"),
        ("application/json", b'{"environment": {}, "other": 1}'),
        ("application/json", b'{"environment": {"_OK_1": ""}}'),
    ],
)
def test_v1_accepted_requests(client: httpx.Client, content_type: str, body: bytes) -> None:
    response = client.post(
        START_208, headers={**basic(DEFAULT_V1_KEY), "content-type": content_type}, content=body
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert set(response.json()) == {"engine_id"}
    assert ENGINE_ID.match(response.json()["engine_id"])


def test_v1_start_shows_up_in_v2_and_admin(emu: Emulator, client: httpx.Client) -> None:
    engine_id = start_v1(client, {"environment": {"REPORT_MONTH": "2024-05"}}).json()["engine_id"]

    run = get_run(client, engine_id)
    assert run["id"] == engine_id
    assert run["project_id"] == DEFAULT_PROJECT_ID
    assert run["job_id"] == "208"
    assert json.loads(run["environment"]) == {"REPORT_MONTH": "2024-05"}
    assert run["creator"] == {
        "username": "alice",
        "name": "Alice Example",
        "email": "alice@example.com",
    }
    admin = client.get("/_emulator/runs").json()["runs"]
    [record] = [r for r in admin if r["id"] == engine_id]
    assert record["api"] == "v1"
    assert record["project_id"] == DEFAULT_PROJECT_ID
    assert record["environment"] == {"REPORT_MONTH": "2024-05"}
    assert record["stop_requested"] is False


# --- API v2: auth and lookups ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, 16),
        ({"Authorization": "Bearer nope"}, 401, 16),
        ({"Authorization": f"Bearer {DEFAULT_V1_KEY}"}, 401, 16),
        (basic(DEFAULT_V2_KEY), 401, 16),
        ({"Authorization": f"Bearer {BOB.v2_key}"}, 403, 7),
    ],
    ids=["none", "wrong", "v1-key", "basic", "other-user"],
)
def test_v2_auth(client: httpx.Client, headers: dict[str, str], status: int, code: int) -> None:
    assert_v2_error(client.get(f"{JOBS}/208", headers=headers), status, code)


def test_v2_not_found(client: httpx.Client) -> None:
    assert_v2_error(client.get("/api/v2/projects/zzzz-zzzz-zzzz-zzzz", headers=ALICE), 404, 5)
    assert_v2_error(client.get(f"{JOBS}/999", headers=ALICE), 404, 5)
    assert_v2_error(client.get(f"{JOBS}/208/runs/aaaaaaaaaaaaaaaa", headers=ALICE), 404, 5)
    assert_v2_error(client.get("/api/v2/nothing-here", headers=ALICE), 404, 5)


def test_v2_projects_only_visible_ones(client: httpx.Client) -> None:
    body = client.get("/api/v2/projects", headers=ALICE).json()
    assert [p["id"] for p in body["projects"]] == [DEFAULT_PROJECT_ID]
    assert body["next_page_token"] == ""

    bob = client.get("/api/v2/projects", headers={"Authorization": f"Bearer {BOB.v2_key}"}).json()
    assert [p["name"] for p in bob["projects"]] == ["bob-sandbox"]
    assert bob["projects"][0]["owner"]["username"] == "bob"


@pytest.mark.parametrize(
    ("search_filter", "found"),
    [
        ({"name": "risk-analysis", "owner.username": "alice"}, True),
        ({"name": "RISK"}, True),  # text filters match a substring, case-insensitively
        ({"owner.username": "ali"}, False),  # identifiers match exactly
        ({"name": "bob-sandbox"}, False),  # not alice's
    ],
)
def test_v2_find_project(client: httpx.Client, search_filter: dict[str, str], found: bool) -> None:
    response = client.get(
        "/api/v2/projects", headers=ALICE, params={"search_filter": json.dumps(search_filter)}
    )
    assert response.status_code == 200
    assert [p["id"] for p in response.json()["projects"]] == ([DEFAULT_PROJECT_ID] if found else [])


def test_v2_get_project(client: httpx.Client) -> None:
    response = client.get(f"/api/v2/projects/{DEFAULT_PROJECT_ID}", headers=ALICE)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    project = response.json()
    assert project["id"] == DEFAULT_PROJECT_ID
    assert project["name"] == "risk-analysis"
    assert project["owner"]["username"] == "alice"
    assert RFC3339_Z.match(project["created_at"])
    assert_v2_error(client.get(f"/api/v2/projects/{BOB_PROJECT_ID}", headers=ALICE), 403, 7)


def test_v2_find_job_by_name_and_get_it(client: httpx.Client) -> None:
    found = client.get(
        JOBS, headers=ALICE, params={"search_filter": json.dumps({"name": "Monthly risk report"})}
    ).json()
    assert [j["id"] for j in found["jobs"]] == ["208"]
    assert found["next_page_token"] == ""

    job = client.get(f"{JOBS}/208", headers=ALICE).json()
    assert job["name"] == "Monthly risk report"
    assert job["project"]["public_identifier"] == DEFAULT_PROJECT_ID
    assert isinstance(job["environment"], str)


def test_v2_jobs_paging(client: httpx.Client) -> None:
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"page_size": "3", **({"page_token": token} if token else {})}
        body = client.get(JOBS, headers=ALICE, params=params).json()
        assert len(body["jobs"]) <= 3
        seen += [j["id"] for j in body["jobs"]]
        token = body["next_page_token"]
        pages += 1
        if not token:
            break
    assert seen == ["208", "209", "210", "211", "212", "213"]
    assert pages == 2

    default_page = client.get(JOBS, headers=ALICE).json()
    assert len(default_page["jobs"]) == 6
    assert default_page["next_page_token"] == ""
    by_name = client.get(JOBS, headers=ALICE, params={"sort": "-name"}).json()
    assert [j["name"] for j in by_name["jobs"]] == sorted(
        (j["name"] for j in by_name["jobs"]), reverse=True
    )


@pytest.mark.parametrize(
    "params",
    [
        {"search_filter": "{not json"},
        {"search_filter": "[]"},
        {"search_filter": json.dumps({"colour": "red"})},
        {"search_filter": json.dumps({"status": "exploded"})},
        {"search_filter": json.dumps({"status": ["running"]})},
        {"sort": "-colour"},
        {"page_size": "ten"},
        {"page_size": "-1"},
        {"page_token": "garbage!"},
    ],
)
def test_v2_list_runs_bad_query_is_400(client: httpx.Client, params: dict[str, str]) -> None:
    assert_v2_error(client.get(f"{JOBS}/208/runs", headers=ALICE, params=params), 400, 3)


# --- API v2: runs ------------------------------------------------------------------------------


def test_v2_create_run(emu: Emulator, client: httpx.Client) -> None:
    response = client.post(
        f"{JOBS}/208/runs",
        headers=ALICE,
        json={
            "project_id": DEFAULT_PROJECT_ID,
            "job_id": "208",
            "environment": {"START_DATE": "2024-01-01"},
            "arguments": "--full",
        },
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    run = response.json()
    assert set(run) <= JOB_RUN_FIELDS
    assert JOB_RUN_FIELDS - set(run) <= {"starting_at", "running_at", "finished_at"}
    assert ENGINE_ID.match(run["id"])
    assert run["status"] == "ENGINE_SCHEDULING"
    assert run["environment"] == '{"START_DATE": "2024-01-01"}'
    assert run["arguments"] == "--full"
    assert RFC3339_Z.match(run["created_at"])
    assert RFC3339_Z.match(run["scheduling_at"])
    assert "finished_at" not in run
    [record] = [r for r in emu.runs() if r["id"] == run["id"]]
    assert record["api"] == "v2"
    assert record["environment"] == {"START_DATE": "2024-01-01"}
    assert record["arguments"] == "--full"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"project_id": "other-project"}',
        b'{"job_id": "209"}',
        b'{"environment": {"A": 1}}',
        b'{"environment": "A=1"}',
        b'{"arguments": ["--x"]}',
    ],
)
def test_v2_create_run_bad_body_is_400(emu: Emulator, client: httpx.Client, body: bytes) -> None:
    before = run_ids(emu)
    assert_v2_error(client.post(f"{JOBS}/208/runs", headers=ALICE, content=body), 400, 3)
    assert run_ids(emu) == before


def test_v2_list_runs_paging_sorting_and_default_page(fresh: Emulator) -> None:
    with httpx.Client(base_url=fresh.url) as client:
        created = [create_run(client)["id"] for _ in range(12)]

        first = client.get(f"{JOBS}/208/runs", headers=ALICE).json()
        assert [r["id"] for r in first["job_runs"]] == created[:10]
        assert first["next_page_token"]
        second = client.get(
            f"{JOBS}/208/runs", headers=ALICE, params={"page_token": first["next_page_token"]}
        ).json()
        assert [r["id"] for r in second["job_runs"]] == created[10:]
        assert second["next_page_token"] == ""

        newest_first: list[str] = []
        token = ""
        while True:
            params = {"page_size": "5", "sort": "-created_at"}
            body = client.get(
                f"{JOBS}/208/runs", headers=ALICE, params={**params, "page_token": token}
            ).json()
            newest_first += [r["id"] for r in body["job_runs"]]
            token = body["next_page_token"]
            if not token:
                break
        assert newest_first == created[::-1]
        oldest = client.get(
            f"{JOBS}/208/runs", headers=ALICE, params={"sort": "+created_at", "page_size": 1}
        ).json()
        assert [r["id"] for r in oldest["job_runs"]] == created[:1]
        assert client.get(f"{JOBS}/209/runs", headers=ALICE).json() == {
            "job_runs": [],
            "next_page_token": "",
        }


def test_v2_list_runs_search_filter(fresh: Emulator) -> None:
    with httpx.Client(base_url=fresh.url) as client:
        done = create_run(client)["id"]
        wait_for(lambda: get_run(client, done)["status"] == "ENGINE_SUCCEEDED")
        running = create_run(client, "211")["id"]
        wait_for(lambda: get_run(client, running, "211")["status"] == "ENGINE_RUNNING")

        def ids(job_id: str, search_filter: dict[str, str]) -> list[str]:
            params = {"search_filter": json.dumps(search_filter)}
            body = client.get(f"{JOBS}/{job_id}/runs", headers=ALICE, params=params).json()
            return [r["id"] for r in body["job_runs"]]

        assert ids("208", {"status": "succeeded"}) == [done]
        assert ids("208", {"status": "ENGINE_SUCCEEDED"}) == [done]
        assert ids("208", {"status": "running"}) == []
        assert ids("211", {"status": "running"}) == [running]
        assert ids("208", {"id": done}) == [done]
        assert ids("208", {"id": running}) == []


def _phases_of_a_second() -> EmulatorConfig:
    """The default world, job 208's scheduling, starting and running a second each: a poll
    every 10 ms sees every phase even on a loaded machine (a 0.1 s phase was missed once)."""
    config = default_config()
    alice, *others = config.projects
    second = {"scheduling_seconds": 1.0, "starting_seconds": 1.0, "running_seconds": 1.0}
    jobs = tuple(job.model_copy(update=second) if job.id == "208" else job for job in alice.jobs)
    projects = (alice.model_copy(update={"jobs": jobs}), *others)
    return config.model_copy(update={"projects": projects})


def test_v2_status_progression_and_timestamps() -> None:
    with Emulator(_phases_of_a_second()) as emu, httpx.Client(base_url=emu.url) as client:
        run = create_run(client)
        seen = [run["status"]]
        while seen[-1] not in TERMINAL:
            time.sleep(0.01)
            status = get_run(client, run["id"])["status"]
            if status != seen[-1]:
                seen.append(status)
        final = get_run(client, run["id"])

    assert seen == ["ENGINE_SCHEDULING", "ENGINE_STARTING", "ENGINE_RUNNING", "ENGINE_SUCCEEDED"]
    stamps = [final[k] for k in ("scheduling_at", "starting_at", "running_at", "finished_at")]
    assert all(RFC3339_Z.match(s) for s in stamps)
    assert stamps == sorted(stamps)
    assert final["created_at"] <= final["scheduling_at"]


@pytest.mark.parametrize(
    ("job_id", "final"),
    [("209", "ENGINE_FAILED"), ("210", "ENGINE_TIMEDOUT")],
)
def test_v2_run_outcomes(client: httpx.Client, job_id: str, final: str) -> None:
    run_id = create_run(client, job_id)["id"]
    wait_for(lambda: get_run(client, run_id, job_id)["status"] in TERMINAL)
    run = get_run(client, run_id, job_id)
    assert run["status"] == final
    assert "finished_at" in run


def test_skipped_run_ends_after_scheduling(tmp_path: Path) -> None:
    config = default_config(time_scale=0.05).model_dump()
    config["projects"][0]["jobs"][0]["outcome"] = "skipped"
    with (
        Emulator(EmulatorConfig.model_validate(config)) as emu,
        httpx.Client(base_url=emu.url) as client,
    ):
        run_id = create_run(client)["id"]
        wait_for(lambda: get_run(client, run_id)["status"] in TERMINAL)
        run = get_run(client, run_id)
    assert run["status"] == "ENGINE_SKIPPED"
    assert "starting_at" not in run
    assert "running_at" not in run


def test_v2_stop_run(emu: Emulator, client: httpx.Client) -> None:
    run_id = create_run(client, "211")["id"]
    wait_for(lambda: get_run(client, run_id, "211")["status"] == "ENGINE_RUNNING")

    response = client.post(f"{JOBS}/211/runs/{run_id}:stop", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["status"] == "ENGINE_STOPPING"
    wait_for(lambda: get_run(client, run_id, "211")["status"] == "ENGINE_STOPPED")
    stopped = get_run(client, run_id, "211")
    assert stopped["finished_at"] >= stopped["running_at"]
    [record] = [r for r in emu.runs() if r["id"] == run_id]
    assert record["stop_requested"] is True
    assert record["status"] == "ENGINE_STOPPED"

    again = client.post(f"{JOBS}/211/runs/{run_id}:stop", headers=ALICE, json={})
    assert again.json() == stopped


def test_v2_stop_finished_run_leaves_it_unchanged(emu: Emulator, client: httpx.Client) -> None:
    run_id = create_run(client)["id"]
    wait_for(lambda: get_run(client, run_id)["status"] == "ENGINE_SUCCEEDED")
    finished = get_run(client, run_id)

    assert client.post(f"{JOBS}/208/runs/{run_id}:stop", headers=ALICE).json() == finished
    assert [r["stop_requested"] for r in emu.runs() if r["id"] == run_id] == [False]


def test_v2_stop_is_a_custom_method_suffix(client: httpx.Client) -> None:
    run_id = create_run(client, "211")["id"]
    assert_v2_error(client.post(f"{JOBS}/211/runs/{run_id}/stop", headers=ALICE), 404, 5)
    assert_v2_error(client.get(f"{JOBS}/211/runs/{run_id}:stop", headers=ALICE), 405, 12)
    assert get_run(client, run_id, "211")["status"] != "ENGINE_STOPPING"
    client.post(f"{JOBS}/211/runs/{run_id}:stop", headers=ALICE)


def test_every_response_has_a_request_id(client: httpx.Client) -> None:
    responses = [
        start_v1(client),
        client.post(START_208),
        client.get("/api/v2/projects", headers=ALICE),
        client.get("/api/v2/projects"),
        client.get("/_emulator/runs"),
        client.get("/nowhere"),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(ids)
    assert len(set(ids)) == len(ids)


# --- fault injection ---------------------------------------------------------------------------


def test_fault_429_with_retry_after(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="429", retry_after=7, times=1))
    emu.inject(Fault(endpoint="v2.get_job", kind="429", times=1))
    before = run_ids(emu)

    throttled = start_v1(client)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "7"
    assert throttled.json()["message"]
    assert run_ids(emu) == before
    v2 = client.get(f"{JOBS}/208", headers=ALICE)
    assert_v2_error(v2, 429, 8)
    assert v2.headers["retry-after"] == "1"
    assert start_v1(client).status_code == 200


@pytest.mark.parametrize(("kind", "code"), [("500", 13), ("502", 14), ("503", 14), ("504", 4)])
def test_fault_server_errors(emu: Emulator, client: httpx.Client, kind: Any, code: int) -> None:
    emu.inject(Fault(endpoint="*", kind=kind, times=2))
    before = run_ids(emu)

    failed = start_v1(client)
    assert failed.status_code == int(kind)
    assert failed.json()["message"]
    assert_v2_error(client.get(f"{JOBS}/208", headers=ALICE), int(kind), code)
    assert run_ids(emu) == before
    assert client.get(f"{JOBS}/208", headers=ALICE).status_code == 200


def test_fault_drop_hangs_up_before_the_work(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="drop", calls=[1]))
    before = run_ids(emu)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        start_v1(client)
    assert run_ids(emu) == before
    last = emu.requests()[-1]
    assert (last["endpoint"], last["status"], last["fault"]) == ("v1.start", "dropped", "drop")
    assert start_v1(client).status_code == 200


def test_fault_drop_on_v2_create(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v2.create_run", kind="drop"))
    before = run_ids(emu)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(f"{JOBS}/208/runs", headers=ALICE, json={"environment": {"A": "b"}})
    assert run_ids(emu) == before


def test_fault_lost_answer_does_the_work(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v1.start", kind="lost_answer", calls=[1]))
    before = run_ids(emu)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        start_v1(client, {"environment": {"ATTEMPT": "1"}})
    [new] = [r for r in emu.runs() if r["id"] not in before]
    assert new["environment"] == {"ATTEMPT": "1"}
    last = emu.requests()[-1]
    assert (last["status"], last["fault"]) == ("dropped", "lost_answer")


def test_fault_latency(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v2.get_job", kind="latency", seconds=0.3, times=1))

    began = time.monotonic()
    response = client.get(f"{JOBS}/208", headers=ALICE)
    assert response.status_code == 200
    assert time.monotonic() - began >= 0.3
    last = emu.requests()[-1]
    assert (last["status"], last["fault"]) == (200, "latency")


def test_fault_rate_is_reproducible_with_a_seed(fresh: Emulator) -> None:
    fresh.inject(Fault(endpoint="v2.get_job", kind="503", rate=0.5, seed=42))
    rng = random.Random(42)
    expected = [503 if rng.random() < 0.5 else 200 for _ in range(20)]

    with httpx.Client(base_url=fresh.url) as client:
        got = [client.get(f"{JOBS}/208", headers=ALICE).status_code for _ in range(20)]
    assert got == expected
    assert 0 < expected.count(503) < 20


def test_fault_call_schedule_and_times(emu: Emulator, client: httpx.Client) -> None:
    emu.inject(Fault(endpoint="v2.get_project", kind="503", calls=[2, 3]))
    emu.inject(Fault(endpoint="v2.list_projects", kind="500", times=1))
    path = f"/api/v2/projects/{DEFAULT_PROJECT_ID}"

    assert [client.get(path, headers=ALICE).status_code for _ in range(4)] == [200, 503, 503, 200]
    statuses = [client.get("/api/v2/projects", headers=ALICE).status_code for _ in range(3)]
    assert statuses == [500, 200, 200]
    emu.inject(Fault(endpoint="v2.get_project", kind="503"))
    emu.clear_faults()
    assert client.get(path, headers=ALICE).status_code == 200


def test_faults_from_config_and_the_request_log(tmp_path: Path) -> None:
    config_file = tmp_path / "emulator.json"
    config = default_config(time_scale=0.05).model_dump(mode="json")
    config["faults"] = [{"endpoint": "v1.start", "kind": 503, "calls": [1]}]
    config_file.write_text(json.dumps(config))

    with Emulator(load_config(config_file)) as emu, httpx.Client(base_url=emu.url) as client:
        assert start_v1(client).status_code == 503
        assert start_v1(client).status_code == 200
        client.get("/_emulator/requests")
        log = client.get("/_emulator/requests").json()["requests"]
    assert log == emu.requests()
    assert [(r["endpoint"], r["method"], r["path"], r["status"], r["fault"]) for r in log] == [
        ("v1.start", "POST", START_208, 503, "503"),
        ("v1.start", "POST", START_208, 200, None),
    ]
    assert all(RFC3339_Z.match(r["timestamp"]) for r in log)


# --- admin and the Overview page ---------------------------------------------------------------


def test_runs_can_be_read_while_runs_are_created(fresh: Emulator) -> None:
    """Tests poll `Emulator.runs()` from their own thread while the server creates runs."""
    read_failures: list[Exception] = []
    with httpx.Client(base_url=fresh.url) as client:
        starter = threading.Thread(target=lambda: [start_v1(client) for _ in range(100)])
        starter.start()
        while starter.is_alive():
            try:
                fresh.runs()
            except Exception as error:  # any failure to read is the bug
                read_failures.append(error)
        starter.join()
    assert read_failures == []
    assert len(fresh.runs()) == 100


def test_admin_runs_lists_both_apis(fresh: Emulator) -> None:
    with httpx.Client(base_url=fresh.url) as client:
        v1 = start_v1(client).json()["engine_id"]
        v2 = create_run(client, "211", {"arguments": "--quick"})["id"]
        client.post(f"{JOBS}/211/runs/{v2}:stop", headers=ALICE)
        runs = client.get("/_emulator/runs").json()["runs"]
        assert client.post("/_emulator/runs").status_code == 405

    def without_status(records: list[Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "status"} for r in records]  # status moves

    assert without_status(runs) == without_status(list(fresh.runs()))
    assert [(r["id"], r["api"], r["job_id"]) for r in runs] == [
        (v1, "v1", "208"),
        (v2, "v2", "211"),
    ]
    assert runs[1]["arguments"] == "--quick"
    assert runs[1]["stop_requested"] is True
    assert set(runs[0]) == {
        "id",
        "api",
        "username",
        "project",
        "project_id",
        "job_id",
        "environment",
        "arguments",
        "status",
        "created_at",
        "stop_requested",
    }


def test_job_overview_page(emu: Emulator, client: httpx.Client) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    assert url == f"{emu.url}/alice/risk-analysis/jobs/208"

    page = client.get(url)
    assert page.status_code == 200
    assert "Monthly risk report" in page.text
    assert client.get(emu.job_url("alice", "risk-analysis", "999")).status_code == 404


# --- per-run outcomes and durations -------------------------------------------------------------

START_212 = "/api/v1/projects/alice/risk-analysis/jobs/212/start"


def with_job(job_id: str, **changes: Any) -> EmulatorConfig:
    """The fast default world with alice's job ``job_id`` changed (validated like a file)."""
    config = default_config(time_scale=0.05).model_dump()
    [job] = [j for j in config["projects"][0]["jobs"] if j["id"] == job_id]
    job.update(changes)
    return EmulatorConfig.model_validate(config)


def final_run(client: httpx.Client, run_id: str, job_id: str) -> dict[str, Any]:
    wait_for(lambda: get_run(client, run_id, job_id)["status"] in TERMINAL)
    return get_run(client, run_id, job_id)


def running_time(run: dict[str, Any]) -> float:
    """Seconds from ``running_at`` to ``finished_at``."""
    started, finished = (
        datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("running_at", "finished_at")
    )
    return (finished - started).total_seconds()


def test_outcome_rule_fails_only_the_matching_window() -> None:
    config = with_job(
        "212",
        outcomes=[
            OutcomeRule(when={"START_DATE": "2017-03-01"}, outcome="failed"),
            OutcomeRule(when={"END_DATE": "2017-03-31"}, outcome="skipped"),  # never reached
        ],
    )
    march = {"START_DATE": "2017-03-01", "END_DATE": "2017-03-31"}
    april = {"START_DATE": "2017-04-01", "END_DATE": "2017-04-30"}
    with Emulator(config) as emu, httpx.Client(base_url=emu.url, timeout=5) as client:
        failed = start_v1(client, {"environment": march}, START_212).json()["engine_id"]
        ok = start_v1(client, {"environment": april}, START_212).json()["engine_id"]
        v2 = create_run(client, "212", {"environment": {"START_DATE": "2017-03-01"}})["id"]
        plain = create_run(client, "212")["id"]

        assert final_run(client, failed, "212")["status"] == "ENGINE_FAILED"
        assert final_run(client, ok, "212")["status"] == "ENGINE_SUCCEEDED"
        assert final_run(client, v2, "212")["status"] == "ENGINE_FAILED"
        assert final_run(client, plain, "212")["status"] == "ENGINE_SUCCEEDED"
        statuses = {r["id"]: r["status"] for r in emu.runs()}
    assert statuses[failed] == "ENGINE_FAILED"
    assert statuses[ok] == "ENGINE_SUCCEEDED"


def test_outcome_rule_running_seconds_still_meets_the_timeout() -> None:
    config = with_job(
        "212",
        timeout_seconds=6,
        outcomes=[
            {"when": {"START_DATE": "2017-03-01"}, "outcome": "succeeded", "running_seconds": 4},
            {"when": {"START_DATE": "2017-04-01"}, "outcome": "succeeded", "running_seconds": 20},
        ],
    )
    with Emulator(config) as emu, httpx.Client(base_url=emu.url, timeout=5) as client:
        runs = {
            month: create_run(client, "212", {"environment": {"START_DATE": month}})["id"]
            for month in ("2017-03-01", "2017-04-01", "2017-05-01")
        }
        march, april, may = (final_run(client, runs[m], "212") for m in sorted(runs))

    assert march["status"] == "ENGINE_SUCCEEDED"
    assert running_time(march) == pytest.approx(4 * 0.05, abs=1e-3)
    assert april["status"] == "ENGINE_TIMEDOUT"
    assert running_time(april) == pytest.approx(6 * 0.05, abs=1e-3)
    assert may["status"] == "ENGINE_SUCCEEDED"  # no rule: the job's own 1 s
    assert running_time(may) == pytest.approx(1 * 0.05, abs=1e-3)


OUTCOMES_TOML = """
[[users]]
username = "alice"
name = "Alice"
email = "alice@example.com"
v1_key = "alice-v1"
v2_key = "alice-v2"

[[projects]]
id = "p1"
owner = "alice"
name = "risk-analysis"

[[projects.jobs]]
id = "211"
name = "Prepare"

[[projects.jobs]]
id = "212"
name = "Train"
running_seconds = 2.5

[[projects.jobs.outcomes]]
when = {START_DATE = "2017-03-01"}
outcome = "failed"
running_seconds = 0.5
"""


def test_outcome_rules_from_toml(tmp_path: Path) -> None:
    config_file = tmp_path / "emulator.toml"
    config_file.write_text(OUTCOMES_TOML)
    job = load_config(config_file).projects[0].jobs[1]
    assert job.running_seconds == 2.5
    assert job.outcomes == (
        OutcomeRule(when={"START_DATE": "2017-03-01"}, outcome="failed", running_seconds=0.5),
    )


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (('{START_DATE = "2017-03-01"}', "{}"), "at least one environment variable"),
        (('{START_DATE = "2017-03-01"}', "{START_DATE = 2017-03-01}"), "when.START_DATE"),
        (('outcome = "failed"', 'outcome = "exploded"'), "outcomes[0].outcome"),
        (("running_seconds = 0.5", "running_seconds = -1"), "outcomes[0].running_seconds"),
        (("running_seconds = 0.5", "colour = 1"), "outcomes[0].colour"),
    ],
)
def test_bad_outcome_rule_names_the_field(
    tmp_path: Path, change: tuple[str, str], mentions: str
) -> None:
    config_file = tmp_path / "emulator.toml"
    config_file.write_text(OUTCOMES_TOML.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_config(config_file)
    assert mentions in str(caught.value)
    assert "projects[0].jobs[1].outcomes[0]" in str(caught.value)


def test_empty_when_is_refused_from_python() -> None:
    with pytest.raises(ValueError, match="at least one environment variable"):
        OutcomeRule(when={}, outcome="failed")


def test_set_outcomes_fixes_a_job_for_its_next_runs() -> None:
    march = {"environment": {"START_DATE": "2017-03-01"}}
    rule = OutcomeRule(when={"START_DATE": "2017-03-01"}, outcome="failed")
    with (
        Emulator(default_config(time_scale=0.05)) as emu,
        httpx.Client(base_url=emu.url, timeout=5) as client,
    ):
        emu.set_outcomes("212", [rule])
        broken = create_run(client, "212", march)["id"]
        assert final_run(client, broken, "212")["status"] == "ENGINE_FAILED"

        emu.set_outcomes("212", [])  # fixed: the job's own outcome again
        rerun = create_run(client, "212", march)["id"]
        assert final_run(client, rerun, "212")["status"] == "ENGINE_SUCCEEDED"
        assert get_run(client, broken, "212")["status"] == "ENGINE_FAILED"  # history kept

        emu.set_outcomes("209", outcome="succeeded")  # 209 fails in the config
        assert final_run(client, create_run(client, "209")["id"], "209")["status"] == (
            "ENGINE_SUCCEEDED"
        )

    with pytest.raises(ValueError, match="no job '999'"):
        emu.set_outcomes("999", outcome="failed")
    with pytest.raises(ValueError, match="no job '208' in project"):
        emu.set_outcomes("208", outcome="failed", project_id=BOB_PROJECT_ID)


# --- config --------------------------------------------------------------------------------------

TOML_CONFIG = """
time_scale = 0.05

[[users]]
username = "carol"
name = "Carol Example"
email = "carol@example.com"
v1_key = "carolv1key0000000000000000000000"
v2_key = "carol-v2-key"

[[users]]
username = "dave"
name = "Dave Example"
email = "dave@example.com"
v1_key = "davev1key00000000000000000000000"
v2_key = "dave-v2-key"

[[teams]]
username = "quants"
name = "Quant Team"
members = ["carol"]

[[projects]]
id = "aaaa-bbbb-cccc-dddd"
owner = "quants"
name = "pricing"

[[projects.jobs]]
id = "7"
name = "Price book"
outcome = "failed"
running_seconds = 0.5

[[faults]]
endpoint = "v2.get_job"
kind = "429"
retry_after = 3
times = 1
"""


def test_toml_config_with_team_project(tmp_path: Path) -> None:
    config_file = tmp_path / "emulator.toml"
    config_file.write_text(TOML_CONFIG)
    config = load_config(config_file)
    assert config.projects[0].jobs[0].outcome == "failed"

    with Emulator(config) as emu, httpx.Client(base_url=emu.url) as client:
        path = "/api/v1/projects/quants/pricing/jobs/7/start"
        ok = client.post(path, headers={**basic("carolv1key0000000000000000000000"), **JSON})
        assert ok.status_code == 200
        denied = client.post(path, headers={**basic("davev1key00000000000000000000000"), **JSON})
        assert denied.status_code == 403
        job_path = "/api/v2/projects/aaaa-bbbb-cccc-dddd/jobs/7"
        carol = {"Authorization": "Bearer carol-v2-key"}
        assert client.get(job_path, headers=carol).status_code == 429
        job = client.get(job_path, headers=carol).json()
        assert job["owner"]["username"] == "quants"
        assert emu.runs()[0]["username"] == "carol"


def test_json_config(tmp_path: Path) -> None:
    config_file = tmp_path / "emulator.json"
    config_file.write_text(default_config(time_scale=0.1).model_dump_json())
    assert load_config(config_file) == default_config(time_scale=0.1)


@pytest.mark.parametrize(
    ("suffix", "text", "mentions"),
    [
        (
            ".toml",
            TOML_CONFIG.replace('outcome = "failed"', 'outcome = "exploded"'),
            "projects[0].jobs[0].outcome",
        ),
        (".toml", TOML_CONFIG.replace('owner = "quants"', 'owner = "nobody"'), "projects[0].owner"),
        (
            ".toml",
            TOML_CONFIG.replace('members = ["carol"]', 'members = ["zed"]'),
            "teams[0].members",
        ),
        (
            ".toml",
            TOML_CONFIG.replace("running_seconds = 0.5", "running_seconds = -1"),
            "running_seconds",
        ),
        (
            ".toml",
            TOML_CONFIG.replace("time_scale = 0.05", "time_scale = 0.05\ncolour = 1"),
            "colour",
        ),
        (".toml", TOML_CONFIG.replace('"v2.get_job"', '"v3.anything"'), "faults[0].endpoint"),
        (".toml", TOML_CONFIG.replace('kind = "429"', 'kind = "418"'), "faults[0].kind"),
        (".toml", TOML_CONFIG.replace('"dave-v2-key"', '"carol-v2-key"'), "v2_key"),
        (".toml", "users = [", "not valid toml"),
        (".json", "{}", "users"),
        (".json", "{", "not valid json"),
        (".yaml", "users: []", ".toml or .json"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, suffix: str, text: str, mentions: str) -> None:
    config_file = tmp_path / f"emulator{suffix}"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file)
    assert mentions in str(caught.value)
    assert str(config_file) in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


# --- the server itself ---------------------------------------------------------------------------


def test_start_stop_and_restart() -> None:
    emu = Emulator(default_config(time_scale=0.05))
    with pytest.raises(RuntimeError):
        _ = emu.url
    emu.start()
    url = emu.url
    with httpx.Client(base_url=url) as client:
        assert start_v1(client).status_code == 200
    began = time.monotonic()
    emu.stop()
    assert time.monotonic() - began < 2
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + START_208)
    emu.stop()
    with emu:
        assert len(emu.runs()) == 1


def test_serve_prints_where_and_as_whom() -> None:
    code = (
        "from cml_tasks.emulator import default_config, serve\n"
        "serve('127.0.0.1', 0, default_config())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(6)]
        url = banner[0].split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        rest = "".join(banner) + "".join(proc.stdout.readline() for _ in range(8))
        assert DEFAULT_V1_KEY in rest
        assert f"{url}/alice/risk-analysis/jobs/208" in rest
        wait_for(lambda: _accepts(url), timeout=10)
        response = httpx.post(url + START_208, headers={**basic(DEFAULT_V1_KEY), **JSON})
        assert response.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _accepts(url: str) -> bool:
    try:
        httpx.get(url + "/_emulator/runs")
    except httpx.TransportError:
        return False
    return True


def test_emulator_does_not_import_prefect() -> None:
    code = (
        "import sys, cml_tasks.emulator\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
