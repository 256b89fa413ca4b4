"""The Prefect UI, proven in a browser: a backfill with one failing window, run by the
`cml_backfill` flow (in a Python process of its own, see `BACKFILL`) on a
`prefect server start` with its UI (fixture `prefect_ui_server`), then read in headless
Chromium (fixture `browser`) as a user would: the flow run's tags, its window-named task runs,
the failed window's short reason, the report artifact whose links open the emulator's run and
job pages, and the CML Credentials block in the Blocks catalogue.

Screenshots go to a temporary folder, printed at the start of the module (`pytest -s`) and
named in every assertion message. `UPDATE_UI_SCREENSHOTS=1` also copies the ones the docs use
to `docs/`. The browser reaches nothing but 127.0.0.1: other requests (the block's logo on
Wikimedia) are aborted, as on a machine without internet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import PrefectServer, _delete_window_records, machine_env, ui_root

from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator, Fault, default_config

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

pytestmark = pytest.mark.timeout(240)

JOB = "risk-analysis/208"
JOB_NAME = "Monthly risk report"
WINDOWS = ["2017-01", "2017-02", "2017-03", "2017-04"]
FAILED = "2017-02"
"""The second start call is rejected (`calls=(2,)`), and windows go one at a time, oldest first."""
REASON = "HTTP 400: bad environment"
TAGS = ["cml", "cml-project:risk-analysis", "cml-job:risk-analysis/208"]
BLOCK = "ui-test-emulator"
FIELD_TITLES = [
    "Workspace URL",
    "API v1 key",
    "API v2 key",
    "Verify TLS certificate",
    "CA bundle (PEM path)",
    "Connect timeout (seconds)",
    "Timeout (seconds)",
    "Allow plain HTTP",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCS_SCREENSHOTS = {
    "flow-run": "ui-backfill-flow-run.png",
    "artifact": "ui-backfill-artifact.png",
    "saved-block": "ui-blocks.png",
}
WAIT_MS = 20_000
"""How long an expectation waits for the UI (it renders after its API calls answer)."""


@dataclass(frozen=True)
class Backfill:
    flow_run_id: str
    emulator: Emulator
    engine_ids: dict[str, str]
    """Window (`2017-01`) -> the engine id of the run the emulator started for it."""


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("ui-screenshots")
    print(f"\nUI screenshots in {folder}")
    yield folder
    if os.environ.get("UPDATE_UI_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        for name, target in DOCS_SCREENSHOTS.items():
            if (folder / f"{name}.png").exists():
                shutil.copyfile(folder / f"{name}.png", DOCS / target)


BACKFILL = """
import json, os, sys
from datetime import date

from cml_tasks.prefect.backfill import cml_backfill
from cml_tasks.prefect.blocks import CMLCredentials

host, block, job = sys.argv[1:4]
CMLCredentials(host=host, api_key=os.environ.pop("TEST_CML_KEY")).save(block, overwrite=True)
state = cml_backfill(
    job=job,
    start=date(2017, 1, 1),
    end=date(2017, 4, 30),
    max_concurrency=1,
    credentials=CMLCredentials.load(block),
    return_state=True,
)
print(json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value}))
"""
"""The backfill, run by a process of its own: Prefect's events and logs workers are global to a
process and keep the API they started with (task runs reach the server as events), so an
in-process run after another test's server would report to that one."""


@pytest.fixture(scope="module")
def backfill(
    prefect_ui_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backfill]:
    """Four months of job 208 through `cml-backfill`, its credentials in a saved block; the
    emulator rejects the second start call (February) with 400 "bad environment"."""
    root = tmp_path_factory.mktemp("ui-backfill")
    env = machine_env(prefect_ui_server, root, "laptop", TEST_CML_KEY=DEFAULT_V1_KEY)
    with Emulator(default_config(time_scale=0.05)) as emu:
        emu.inject(
            Fault(
                endpoint="v1.start",
                kind="answer",
                status=400,
                body='{"message": "bad environment"}',
                headers={"content-type": "application/json"},
                calls=(2,),
            )
        )
        job = emu.job_url("alice", "risk-analysis", "208")
        done = subprocess.run(
            [sys.executable, "-c", BACKFILL, emu.url, BLOCK, job],
            env=env,
            cwd=root / "laptop" / "work",
            capture_output=True,
            text=True,
            timeout=180,
        )
        output = f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        assert done.returncode == 0, output
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["state"] == "FAILED", output
        engine_ids = {run["environment"]["START_DATE"][:7]: run["id"] for run in emu.runs()}
        assert sorted(engine_ids) == [w for w in WINDOWS if w != FAILED], emu.runs()
        yield Backfill(result["flow_run_id"], emu, engine_ids)
    _delete_window_records(prefect_ui_server.api_url)


@pytest.fixture(scope="module")
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, shots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A tab; whatever it shows at the end of the test is saved as `<test>-last.png`."""
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    page.screenshot(path=shots / f"{request.node.name}-last.png", full_page=True)
    page.close()


def shot(page: Page, folder: Path, name: str, *, full_page: bool = False) -> Path:
    """`folder/<name>.png` once the page's requests are done (or 5 s passed: what is asserted
    was waited for already), its fade-ins finished."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path = folder / f"{name}.png"
    with suppress(PlaywrightTimeout):
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.screenshot(path=path, full_page=full_page, animations="disabled")
    return path


def visible(locator: Locator, what: str, folder: Path) -> None:
    from playwright.sync_api import expect

    expect(locator, f"{what} (screenshots in {folder})").to_be_visible(timeout=WAIT_MS)


def open_tab(page: Page, name: str) -> None:
    page.locator("li.p-tab", has_text=re.compile(f"^{name}$")).click()


# --- the flow run -----------------------------------------------------------------------------


def test_flow_run_shows_tags_window_task_runs_and_the_failure(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    page.goto(f"{ui_root(prefect_ui_server)}/runs/flow-run/{backfill.flow_run_id}")
    heading = page.locator("header.page-heading")
    visible(heading.get_by_text(re.compile(f"^backfill {re.escape(JOB)} ")), "run name", shots)
    for tag in TAGS:
        visible(heading.get_by_text(tag, exact=True), f"flow run tag {tag!r}", shots)
    visible(heading.get_by_text("Failed", exact=True), "the flow run's Failed state", shots)
    # The run graph names each window's task run (drawn on a canvas: see the screenshot).
    shot(page, shots, "flow-run")

    open_tab(page, "Task Runs")
    for window in WINDOWS:
        row = page.locator(".task-run-list-item", has_text=f"{JOB} {window}")
        visible(row.get_by_role("link", name=f"{JOB} {window}", exact=True), window, shots)
        state = "Failed" if window == FAILED else "Completed"
        visible(row.get_by_text(state, exact=True), f"{window} {state}", shots)
        for tag in TAGS:
            visible(row.get_by_text(tag, exact=True), f"task run tag {tag!r}", shots)
    shot(page, shots, "task-runs", full_page=True)

    open_tab(page, "Details")
    visible(
        page.get_by_text(re.compile(f"1 of 4 windows failed:\\s+{FAILED}: start failed")),
        "the flow run's state message",
        shots,
    )

    # The failed window's own page: its state's message is the short reason.
    page.goto(f"{ui_root(prefect_ui_server)}/runs/flow-run/{backfill.flow_run_id}")
    open_tab(page, "Task Runs")
    page.get_by_role("link", name=f"{JOB} {FAILED}", exact=True).click()
    visible(
        page.get_by_text(f"Finished in state Failed('{FAILED}: {REASON}')"),
        "the failed task run's short reason",
        shots,
    )
    shot(page, shots, "failed-task-run", full_page=True)


# --- the report artifact and the emulator's pages it links to ---------------------------------


def test_artifact_table_links_open_the_emulators_run_and_job_pages(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    page.goto(f"{ui_root(prefect_ui_server)}/runs/flow-run/{backfill.flow_run_id}")
    open_tab(page, "Artifacts")
    visible(page.get_by_text("4 of 4 windows: 3 started, 1 failed"), "progress artifact", shots)
    key = "cml-backfill-risk-analysis-208-2017-01-01-2017-04-30"
    card = page.locator("a[href^='/artifacts/artifact/']", has_text=key)
    visible(card, f"the report artifact {key}", shots)
    shot(page, shots, "artifacts-tab")
    card.click()

    table = page.locator("table")
    visible(table, "the report table", shots)
    visible(
        page.get_by_text(f"Backfill of {JOB}: 4 windows: 3 started, 1 start failed").first,
        "the report's summary",
        shots,
    )
    for window in WINDOWS:
        row = table.locator("tr", has_text=window)
        if window == FAILED:
            visible(row.get_by_text("start failed", exact=True), f"{window} result", shots)
            visible(row.get_by_text(REASON, exact=True), f"{window} short reason", shots)
            continue
        engine_id = backfill.engine_ids[window]
        run_link = row.locator(f"a[href$='/jobs/208/runs/{engine_id}']")
        visible(run_link, f"{window}: a link to run {engine_id}", shots)
        assert run_link.inner_text().startswith(f"run {engine_id[:4]}"), (
            f"{window}: the run link reads {run_link.inner_text()!r}, not the engine id "
            f"{engine_id} (screenshots in {shots})"
        )
        visible(row.get_by_text("started", exact=True), f"{window} result", shots)
        visible(row.get_by_role("link", name="job page"), f"{window} job page link", shots)
    shot(page, shots, "artifact")

    # Follow one run link and one job-page link, as a user clicks them (they open a new tab).
    engine_id = backfill.engine_ids["2017-03"]
    run_tab = follow(page, table.locator(f"a[href$='/runs/{engine_id}']"), shots)
    visible(run_tab.locator("h1", has_text=f"Run {engine_id} of {JOB_NAME}"), "run page", shots)
    visible(run_tab.get_by_text("2017-03-31", exact=True), "the run's END_DATE", shots)
    shot(run_tab, shots, "emulator-run-page")
    run_tab.close()

    job_tab = follow(page, table.locator("tr", has_text="2017-01").get_by_text("job page"), shots)
    visible(job_tab.locator("h1", has_text=JOB_NAME), "job page", shots)
    for window, engine_id in backfill.engine_ids.items():
        visible(
            job_tab.get_by_role("link", name=engine_id, exact=True),
            f"the job page lists run {engine_id} ({window})",
            shots,
        )
    shot(job_tab, shots, "emulator-job-page")
    job_tab.close()


def follow(page: Page, link: Locator, shots: Path) -> Page:
    """Click a link that opens a new tab; the tab, once its page answered 200."""
    href = link.get_attribute("href")
    assert href and href.startswith("http://127.0.0.1:"), href
    with (
        page.context.expect_page() as new_tab,
        page.context.expect_event("response", lambda r: r.url == href) as answer,
    ):
        link.click()
    assert answer.value.status == 200, f"{href} answered {answer.value.status} ({shots})"
    tab = new_tab.value
    tab.set_default_timeout(WAIT_MS)
    tab.wait_for_load_state()
    return tab


# --- the credentials block --------------------------------------------------------------------


def test_credentials_block_in_the_catalogue_with_titles_logo_and_masked_keys(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    from cml_tasks.prefect.blocks import DOCUMENTATION_URL, LOGO_URL

    root = ui_root(prefect_ui_server)
    page.goto(f"{root}/blocks/catalog")
    page.get_by_placeholder("Search blocks").fill("CML")
    card = page.locator(".p-card", has_text="CML Credentials")
    visible(card.get_by_text("CML Credentials", exact=True), "the catalogue's CML card", shots)
    visible(card.get_by_text("Cloudera Machine Learning (CML)"), "its description", shots)
    assert card.locator("img").get_attribute("src") == LOGO_URL
    shot(page, shots, "blocks-catalogue")

    card.get_by_text("Details", exact=True).click()
    visible(page.get_by_role("link", name="Documentation"), "the docs link", shots)
    assert page.get_by_role("link", name="Documentation").get_attribute("href") == (
        DOCUMENTATION_URL
    )
    visible(page.get_by_text('CMLCredentials.load("block-name")'), "the code example", shots)
    shot(page, shots, "block-type")

    page.get_by_text("Create", exact=True).click()
    for title in FIELD_TITLES:
        visible(
            page.get_by_text(re.compile(f"^{re.escape(title)}( \\(Optional\\))?$")),
            f"field title {title!r}",
            shots,
        )
    visible(page.get_by_text("Seconds to wait for a connection"), "timeout unit", shots)
    shot(page, shots, "block-form")

    # The saved block: its key masked in the page, never in it.
    page.goto(f"{root}/blocks")
    page.get_by_text(BLOCK, exact=True).click()
    visible(page.get_by_text("API v1 key"), "the saved block's fields", shots)
    visible(page.get_by_text(backfill.emulator.url), "its workspace URL", shots)
    visible(page.get_by_text(re.compile(r"^\*{8,}$")).first, "the masked key", shots)
    assert DEFAULT_V1_KEY not in page.content()
    shot(page, shots, "saved-block")
