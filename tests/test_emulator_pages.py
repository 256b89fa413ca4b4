"""The emulator's browser pages over real sockets: a job's Overview page and a run's page (the
URLs the project links to: `JobRef.page_url`, `StartedRun.page_url`), 404 pages, escaping."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from cml_tasks.emulator import (
    DEFAULT_PROJECT_ID,
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    Emulator,
    default_config,
)
from cml_tasks.emulator._config import JobConfig

START = "/api/v1/projects/alice/risk-analysis/jobs/{job}/start"
V1_AUTH = {"Authorization": "Basic " + base64.b64encode(f"{DEFAULT_V1_KEY}:".encode()).decode()}
HOSTILE_NAME = "<script>alert('job')</script> & co"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    """Job 208 succeeds in ~0.07 s; job 211 runs for seconds; job 666 has a hostile name."""
    config = default_config(time_scale=0.05)
    project = config.projects[0]
    hostile = JobConfig(id="666", name=HOSTILE_NAME, script="<x>.py")
    config = config.model_copy(
        update={
            "projects": (
                project.model_copy(update={"jobs": (*project.jobs, hostile)}),
                *config.projects[1:],
            )
        }
    )
    with Emulator(config) as emulator:
        yield emulator


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=5) as client:
        yield client


def start(http: httpx.Client, job: str, environment: dict[str, str]) -> str:
    answer = http.post(START.format(job=job), json={"environment": environment}, headers=V1_AUTH)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["engine_id"])


def is_html(answer: httpx.Response) -> bool:
    return answer.headers["content-type"].startswith("text/html") and answer.text.startswith(
        "<!doctype html>"
    )


def test_run_page_shows_id_status_times_and_environment(emu: Emulator, http: httpx.Client) -> None:
    run_id = start(http, "208", {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"})
    url = f"{emu.job_url('alice', 'risk-analysis', '208')}/runs/{run_id}"
    deadline = time.monotonic() + 10
    while "Succeeded" not in (page := http.get(url)).text and time.monotonic() < deadline:
        time.sleep(0.05)

    assert page.status_code == 200 and is_html(page)
    assert f"<title>Run {run_id} - Monthly risk report - alice/risk-analysis</title>" in page.text
    assert f"<h1>Run {run_id} of Monthly risk report</h1>" in page.text
    assert "<span class='status'>Succeeded</span>" in page.text
    assert "<code>report.py</code>" in page.text
    created = re.search(r"<th>Created</th><td>([^<]+)</td>", page.text)
    finished = re.search(r"<th>Finished</th><td>([^<]+)</td>", page.text)
    assert created and finished, page.text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", created[1])
    assert finished[1] > created[1]
    assert "<tr><td><code>END_DATE</code></td><td><code>2017-01-31</code></td></tr>" in page.text
    assert "<tr><td><code>START_DATE</code></td><td><code>2017-01-01</code></td></tr>" in page.text
    assert "<a href='/alice/risk-analysis/jobs/208'>Monthly risk report</a>" in page.text
    assert DEFAULT_V1_KEY not in page.text


def test_run_page_of_a_running_run_is_not_finished(emu: Emulator, http: httpx.Client) -> None:
    run_id = start(http, "211", {})
    page = http.get(f"/alice/risk-analysis/jobs/211/runs/{run_id}")
    assert page.status_code == 200
    assert re.search(r"<span class='status'>(Scheduling|Starting|Running)</span>", page.text)
    assert "<th>Finished</th><td>not yet</td>" in page.text
    assert "No environment variables." in page.text


def test_job_page_lists_recent_runs_newest_first_with_links(
    emu: Emulator, http: httpx.Client
) -> None:
    first = start(http, "209", {"N": "1"})
    second = start(http, "209", {"N": "2"})
    page = http.get(emu.job_url("alice", "risk-analysis", "209"))

    assert page.status_code == 200 and is_html(page)
    assert "<title>Data quality check - alice/risk-analysis</title>" in page.text
    assert "<h1>Data quality check</h1>" in page.text
    assert "script <code>dq.py</code>" in page.text
    links = re.findall(r"<a href='/alice/risk-analysis/jobs/209/runs/(\w+)'>\1</a>", page.text)
    assert links[:2] == [second, first]
    for run_id in links[:2]:
        run_page = http.get(f"/alice/risk-analysis/jobs/209/runs/{run_id}")
        assert run_page.status_code == 200 and run_id in run_page.text


def test_job_page_without_runs(emu: Emulator, http: httpx.Client) -> None:
    page = http.get("/alice/risk-analysis/jobs/210")
    assert page.status_code == 200
    assert "<h1>Stress test</h1>" in page.text and "No runs yet." in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/nobody/risk-analysis/jobs/208",
        "/alice/no-project/jobs/208",
        "/alice/risk-analysis/jobs/999",
        "/alice/risk-analysis/jobs/999/runs/abcdefghijklmnop",
        "/nobody/risk-analysis/jobs/208/runs/abcdefghijklmnop",
        "/alice/risk-analysis/jobs/208/runs/abcdefghijklmnop",
        "/alice/risk-analysis/jobs/208/runs/%3Cscript%3E",
    ],
)
def test_unknown_user_project_job_or_run_is_a_404_page(http: httpx.Client, path: str) -> None:
    page = http.get(path)
    assert page.status_code == 404 and is_html(page)
    assert "<h1>Not found</h1>" in page.text
    assert "<script>" not in page.text


def test_a_run_of_another_job_is_not_found_under_this_job(http: httpx.Client) -> None:
    run_id = start(http, "208", {})
    assert http.get(f"/alice/risk-analysis/jobs/209/runs/{run_id}").status_code == 404
    assert http.get(f"/bob/risk-analysis/jobs/208/runs/{run_id}").status_code == 404


def test_every_text_is_escaped(http: httpx.Client) -> None:
    run_id = start(http, "666", {"NOTE": "</code><img src=x onerror=alert(1)>&amp;"})
    job_page = http.get("/alice/risk-analysis/jobs/666")
    run_page = http.get(f"/alice/risk-analysis/jobs/666/runs/{run_id}")
    for page in (job_page, run_page):
        assert page.status_code == 200
        assert "<script>" not in page.text and "<x>" not in page.text
        assert "&lt;script&gt;alert(&#39;job&#39;)&lt;/script&gt; &amp; co" in page.text
    assert "<img" not in run_page.text
    assert "&lt;/code&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in run_page.text
    assert "<code>&lt;x&gt;.py</code>" in run_page.text
    assert "<code>&lt;x&gt;.py</code>" in job_page.text
    assert "<a href='/alice/risk-analysis/jobs/666'>&lt;script&gt;" in run_page.text
    assert "<title>&lt;script&gt;alert(" in job_page.text and "<h1>&lt;script&gt;" in job_page.text
    assert f"<title>Run {run_id} - &lt;script&gt;" in run_page.text
    assert f"<h1>Run {run_id} of &lt;script&gt;" in run_page.text


def test_a_script_tag_in_the_environment_or_arguments_is_shown_as_text(http: httpx.Client) -> None:
    run_id = start(http, "208", {"TAG": "<script>alert(1)</script>"})
    page = http.get(f"/alice/risk-analysis/jobs/208/runs/{run_id}")
    assert page.status_code == 200 and "<script>" not in page.text
    assert (
        "<tr><td><code>TAG</code></td>"
        "<td><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></td></tr>" in page.text
    )
    answer = http.post(
        f"/api/v2/projects/{DEFAULT_PROJECT_ID}/jobs/208/runs",
        json={"arguments": "--note '<script>'"},
        headers={"Authorization": f"Bearer {DEFAULT_V2_KEY}"},
    )
    assert answer.status_code == 200, answer.text
    page = http.get(f"/alice/risk-analysis/jobs/208/runs/{answer.json()['id']}")
    assert page.status_code == 200 and "<script>" not in page.text
    assert (
        "<tr><th>Arguments</th><td><code>--note &#39;&lt;script&gt;&#39;</code></td></tr>"
        in page.text
    )


def test_a_404_page_shows_the_requested_names_escaped(http: httpx.Client) -> None:
    page = http.get("/alice/risk-analysis/jobs/208/runs/%3Cscript%3E")
    assert page.status_code == 404 and is_html(page)
    assert "<title>Not found</title>" in page.text
    assert "<p>No run &lt;script&gt; of job 208 in project alice/risk-analysis.</p>" in page.text
    page = http.get("/%3Cb%3E/risk-analysis/jobs/%3Ci%3E")
    assert page.status_code == 404 and "<b>" not in page.text and "<i>" not in page.text
    assert "<p>No job &lt;i&gt; in project &lt;b&gt;/risk-analysis.</p>" in page.text


def test_every_page_has_the_layout(emu: Emulator, http: httpx.Client) -> None:
    run_id = start(http, "208", {})
    for path in (
        "/alice/risk-analysis/jobs/208",
        f"/alice/risk-analysis/jobs/208/runs/{run_id}",
        "/alice/risk-analysis/jobs/999",
    ):
        page = http.get(path)
        assert is_html(page), path
        assert "<header>Cloudera Machine Learning (emulator)</header>" in page.text
        assert "<style>" in page.text and ".status { font-weight: bold; }" in page.text
        assert page.text.endswith("</body></html>\n")


def test_the_job_page_lists_at_most_50_runs(http: httpx.Client) -> None:
    started = [start(http, "209", {}) for _ in range(52)]
    page = http.get("/alice/risk-analysis/jobs/209")
    links = re.findall(r"<a href='/alice/risk-analysis/jobs/209/runs/(\w+)'>\1</a>", page.text)
    assert links == started[::-1][:50]


def test_pages_are_get_only_and_need_no_key(http: httpx.Client) -> None:
    assert http.get("/alice/risk-analysis/jobs/208").status_code == 200
    assert http.post("/alice/risk-analysis/jobs/208").status_code == 405
