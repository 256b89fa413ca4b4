"""API v2 client against the emulator over real sockets: lookups, paging, runs, safe retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

import cml_tasks.client as client_module
from cml_tasks import (
    AsyncCMLClient,
    CMLAuthError,
    CMLClient,
    CMLConfigError,
    CMLInputError,
    CMLNotFoundError,
    CMLOutcomeUnknown,
    CMLProtocolError,
    CMLSettings,
    RetryPolicy,
)
from cml_tasks.emulator import (
    DEFAULT_V2_KEY,
    Emulator,
    EmulatorConfig,
    Fault,
    JobConfig,
    ProjectConfig,
    default_config,
)
from cml_tasks.run_status import RunStatus

FAST_RETRY = RetryPolicy(attempts=4, timeout=5, wait_initial=0.01, wait_max=0.05)


def settings(**overrides: object) -> CMLSettings:
    return CMLSettings.load(**{"host": None, "api_v2_key": DEFAULT_V2_KEY, **overrides})


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    base = default_config(time_scale=0.05)
    many_jobs = ProjectConfig(
        id="many-jobs-0001",
        owner="alice",
        name="many-jobs",
        jobs=tuple(JobConfig(id=f"j{i:03d}", name=f"Job number {i}") for i in range(230)),
    )
    config = EmulatorConfig.model_validate(
        {**base.model_dump(), "projects": [*base.model_dump()["projects"], many_jobs.model_dump()]}
    )
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator) -> Iterator[Emulator]:
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
def client() -> Iterator[CMLClient]:
    with CMLClient(settings(), retry=FAST_RETRY) as cml:
        yield cml


def calls(emu: Emulator, endpoint: str, since: int = 0) -> int:
    """Requests to `endpoint` logged after `since`; the log may trail an answer by a moment."""
    time.sleep(0.05)
    return sum(1 for r in emu.requests()[since:] if r["endpoint"] == endpoint)


def test_create_get_list_stop_round_trip(emu: Emulator, client: CMLClient) -> None:
    url = emu.job_url("alice", "risk-analysis", "211")
    run = client.create_run(url, {"START_DATE": "2017-01-01"}, arguments="--fast")
    assert run.environment == {"START_DATE": "2017-01-01"}  # decoded from the JSON string
    assert run.arguments == "--fast"
    assert run.page_url == f"{url}/runs/{run.id}"
    assert run.creator == "alice"
    assert not run.is_terminal

    assert client.get_run(url, run.id).id == run.id
    assert run.id in [r.id for r in client.list_runs(url)]
    stopped = client.stop_run(url, run.id)
    assert stopped.status in (RunStatus.STOPPING, RunStatus.STOPPED)
    record = next(r for r in emu.runs() if r["id"] == run.id)
    assert record["stop_requested"] and record["api"] == "v2"


def test_lookup_follows_every_page_and_is_cached(emu: Emulator, client: CMLClient) -> None:
    before = len(emu.requests())
    url = emu.job_url("alice", "many-jobs", "j229")  # on the third page of 100
    first = client.create_run(url)
    assert calls(emu, "v2.list_jobs", before) == 3
    assert calls(emu, "v2.list_projects", before) == 1
    client.get_run(url, first.id)
    client.create_run(url)
    assert calls(emu, "v2.list_jobs", before) == 3  # cached per client
    assert calls(emu, "v2.list_projects", before) == 1


def test_job_found_by_name_too(emu: Emulator, client: CMLClient) -> None:
    with pytest.raises(CMLInputError):
        client.create_run(emu.job_url("alice", "many-jobs", "Job number 7"))  # not a valid id
    run = client.create_run(f"{emu.url}/alice/many-jobs/jobs/j007")
    assert run.job_id == "j007"


def test_unknown_project_or_job_is_not_found(emu: Emulator, client: CMLClient) -> None:
    with pytest.raises(CMLNotFoundError, match="no such project"):
        client.get_run(emu.job_url("alice", "no-such-project", "208"), "abc")
    with pytest.raises(CMLNotFoundError, match="no such job"):
        client.get_run(emu.job_url("alice", "risk-analysis", "999"), "abc")
    with pytest.raises(CMLNotFoundError):
        client.get_run(emu.job_url("alice", "risk-analysis", "208"), "nosuchrun0000000")


def test_list_runs_follows_next_page_token(emu: Emulator, client: CMLClient) -> None:
    url = emu.job_url("alice", "bob-sandbox", "301").replace("/alice/", "/bob/")
    with CMLClient(settings(api_v2_key=emu.config.users[1].v2_key), retry=FAST_RETRY) as bob:
        created = [bob.create_run(url, {"N": str(i)}).id for i in range(23)]
        before = len(emu.requests())
        listed = [r.id for r in bob.list_runs(url, page_size=5)]
    assert listed == list(reversed(created))  # newest first
    assert calls(emu, "v2.list_runs", before) == 5
    page = client.list_runs_page(emu.job_url("alice", "risk-analysis", "208"), page_size=1)
    assert len(page.runs) <= 1


def test_missing_key_or_plain_remote_http_sends_nothing(emu: Emulator) -> None:
    before = len(emu.requests())
    with CMLClient(settings(api_v2_key=None)) as cml, pytest.raises(CMLConfigError) as missing:
        cml.get_run(emu.job_url("alice", "risk-analysis", "208"), "abc")
    assert "CML_API_V2_KEY" in str(missing.value)
    with CMLClient(settings()) as cml, pytest.raises(CMLConfigError, match="plain http"):
        cml.create_run("http://cml.example.com/alice/risk-analysis/jobs/208")
    assert len(emu.requests()) == before


def test_wrong_key_is_an_auth_error_without_the_key(emu: Emulator) -> None:
    wrong = "0" * 64
    with CMLClient(settings(api_v2_key=wrong)) as cml, pytest.raises(CMLAuthError) as error:
        cml.list_runs_page(emu.job_url("alice", "risk-analysis", "208"))
    assert "CML_API_V2_KEY" in str(error.value)
    assert wrong not in str(error.value)


@pytest.mark.parametrize("kind", ["500", "502", "503", "504", "drop", "429"])
@pytest.mark.parametrize("endpoint", ["v2.get_run", "v2.list_runs", "v2.stop_run"])
def test_reads_and_stop_are_retried(
    emu: Emulator, client: CMLClient, endpoint: str, kind: str
) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    run = client.create_run(url)
    emu.inject(Fault(endpoint=endpoint, kind=kind, times=2, retry_after=0))
    before = len(emu.requests())
    if endpoint == "v2.get_run":
        assert client.get_run(url, run.id).id == run.id
    elif endpoint == "v2.list_runs":
        assert client.list_runs_page(url).runs
    else:
        client.stop_run(url, run.id)
    assert calls(emu, endpoint, before) == 3


@pytest.mark.parametrize("kind", ["500", "504", "drop", "lost_answer"])
def test_create_is_not_retried_when_the_outcome_is_unknown(
    emu: Emulator, client: CMLClient, kind: str
) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    client.list_runs_page(url)  # warm the id cache
    emu.inject(Fault(endpoint="v2.create_run", kind=kind, times=1))
    before = len(emu.requests())
    with pytest.raises(CMLOutcomeUnknown):
        client.create_run(url)
    assert calls(emu, "v2.create_run", before) == 1


def test_create_is_retried_when_surely_not_done(emu: Emulator, client: CMLClient) -> None:
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(Fault(endpoint="v2.create_run", kind="503", times=1))
    runs_before = len(emu.runs())
    client.create_run(url)
    assert len(emu.runs()) == runs_before + 1


def test_async_client_has_the_same_calls(emu: Emulator) -> None:
    url = emu.job_url("alice", "risk-analysis", "211")

    async def scenario() -> list[str]:
        async with AsyncCMLClient(settings(), retry=FAST_RETRY) as cml:
            run = await cml.create_run(url, {"A": "1"})
            emu.inject(Fault(endpoint="v2.get_run", kind="503", times=1))
            assert (await cml.get_run(url, run.id)).environment == {"A": "1"}
            await cml.stop_run(url, run.id)
            return [r.id async for r in cml.list_runs(url, page_size=2)]

    ids = asyncio.run(scenario())
    assert len(ids) == len({r["id"] for r in emu.runs() if r["job_id"] == "211"})


RUN_JSON = {
    "id": "abcdefgh12345678",
    "project_id": "lv1g-4hu5-a359-wagc",
    "job_id": "208",
    "status": "ENGINE_RUNNING",
    "created_at": "2017-01-01T00:00:00Z",
}
PROJECT: dict[str, object] = {
    "id": "lv1g-4hu5-a359-wagc",
    "name": "risk-analysis",
    "owner": {"username": "alice"},
}


def answer(endpoint: str, body: object) -> Fault:
    return Fault(endpoint=endpoint, kind="answer", body=json.dumps(body))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("v2.list_projects", {"projects": [], "next_page_token": "again"}),
        ("v2.list_jobs", {"jobs": [], "next_page_token": "again"}),
        ("v2.list_runs", {"job_runs": [RUN_JSON], "next_page_token": "again"}),
    ],
    ids=["project lookup", "job lookup", "run listing"],
)
def test_repeated_page_token_is_a_protocol_error(
    emu: Emulator, client: CMLClient, endpoint: str, body: dict[str, object]
) -> None:
    """Issue item 6: a `next_page_token` that comes back made 1,500+ requests in 75 s and
    never ended; the second time a token comes, the listing stops with a protocol error."""
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(answer(endpoint, body))
    before = len(emu.requests())
    began = time.monotonic()
    with pytest.raises(CMLProtocolError, match="next_page_token it had already given"):
        list(client.list_runs(url))
    assert time.monotonic() - began < 2
    assert calls(emu, endpoint, before) == 2


def test_repeated_page_token_in_the_async_client(emu: Emulator) -> None:
    """Issue item 6, the async twin of `list_runs`."""
    url = emu.job_url("alice", "risk-analysis", "208")
    emu.inject(answer("v2.list_runs", {"job_runs": [RUN_JSON], "next_page_token": "again"}))

    async def scenario() -> None:
        async with AsyncCMLClient(settings(), retry=FAST_RETRY) as cml:
            async for _ in cml.list_runs(url):
                pass

    with pytest.raises(CMLProtocolError, match="already given"):
        asyncio.run(scenario())


def test_paging_stops_after_max_pages(
    emu: Emulator, client: CMLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue item 6: tokens that never repeat but never end stop after `MAX_PAGES` pages
    (1000; 2 here, on the emulator's real paging: 230 jobs on 3 pages of 100, and runs one
    per page)."""
    monkeypatch.setattr(client_module, "MAX_PAGES", 2)
    before = len(emu.requests())
    with pytest.raises(CMLProtocolError, match="after 2 pages"):
        client.create_run(emu.job_url("alice", "many-jobs", "j229"))
    assert calls(emu, "v2.list_jobs", before) == 2
    url = emu.job_url("alice", "risk-analysis", "212")
    for n in range(3):
        client.create_run(url, {"N": str(n)})
    before = len(emu.requests())
    with pytest.raises(CMLProtocolError, match=r"after 2 pages \(MAX_PAGES\)"):
        list(client.list_runs(url, page_size=1))
    assert calls(emu, "v2.list_runs", before) == 2
    listed = len(list(client.list_runs(url, page_size=2)))  # two pages: within the bound
    assert listed == sum(1 for run in emu.runs() if run["job_id"] == "212") == 3


def test_two_projects_with_the_same_owner_and_name_are_refused(
    emu: Emulator, client: CMLClient
) -> None:
    """Issue item 10: the first of two `alice/risk-analysis` was used silently. Owner and
    name make a project's URL, unique in CML: two is a wrong answer (`CMLProtocolError`,
    exit 6), naming both ids; the job URL cannot say which one is meant."""
    twin = {**PROJECT, "id": "zzzz-9999-twin-0001"}
    emu.inject(answer("v2.list_projects", {"projects": [PROJECT, twin]}))
    runs_before = len(emu.runs())
    with pytest.raises(CMLProtocolError) as caught:
        client.create_run(emu.job_url("alice", "risk-analysis", "208"))
    assert "2 projects with that owner and name" in str(caught.value)
    assert f"({PROJECT['id']}, {twin['id']})" in str(caught.value)
    assert len(emu.runs()) == runs_before  # nothing started on a guess


@pytest.mark.parametrize(
    "created_at",
    ["2017-01-01T00:00:00", "2017-01-01 00:00", "yesterday", 5],
    ids=["naive", "naive short", "not a time", "a number"],
)
def test_run_with_a_naive_or_malformed_created_at_is_a_protocol_error(
    emu: Emulator, client: CMLClient, created_at: object
) -> None:
    """Issue item 9: a `created_at` without a time zone is unusable (it cannot be compared
    with an attempt's time): reading such a run is a `CMLProtocolError`."""
    url = emu.job_url("alice", "risk-analysis", "208")
    run = {**RUN_JSON, "created_at": created_at}
    emu.inject(answer("v2.list_runs", {"job_runs": [run]}))
    emu.inject(answer("v2.get_run", run))
    with pytest.raises(CMLProtocolError, match="created_at"):
        client.list_runs_page(url)
    with pytest.raises(CMLProtocolError, match="created_at"):
        client.get_run(url, RUN_JSON["id"])


def test_stacked_content_encoding_on_a_read_is_a_protocol_error(
    emu: Emulator, client: CMLClient
) -> None:
    """Issue item 8 for reads, on the emulator: two content-codings are refused unread
    (tests/test_client.py serves real gzip bombs and measures the memory)."""
    url = emu.job_url("alice", "risk-analysis", "208")
    client.list_runs_page(url)  # warm the id cache
    emu.inject(
        Fault(
            endpoint="v2.list_runs",
            kind="answer",
            headers={"Content-Encoding": "gzip, gzip"},
            body="never decoded",
        )
    )
    with pytest.raises(CMLProtocolError, match="more than one content-coding"):
        client.list_runs_page(url)
