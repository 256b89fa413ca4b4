"""The Prefect UI, proven in a browser: a backfill with one failing window, run by the
`cml_backfill` flow (in a Python process of its own, see `BACKFILL`) on a
`prefect server start` with its UI (fixture `prefect_ui_server`), then read in headless
Chromium (fixture `browser`) as a user would: the flow run's tags, its window-named task runs,
the failed window's short reason, the report artifact whose links open the emulator's run and
job pages, and the CML Credentials block in the Blocks catalogue: there after a first flow run
on a fresh server (the flows register it), its keys password inputs in the create and edit
forms of Prefect's default UI (`/v2`; the v1 UI has no masked input), a deployment's run
form with titled parameters, a cadence choice and the block's name in its picker, and the
Event Feed's cards naming the CML run and the failed window's reason.

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
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
    "variables": "ui-variables.png",
    "events": "ui-events.png",
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


DRY_BACKFILL = """
import sys
from datetime import date

from cml_tasks.prefect.backfill import cml_backfill

state = cml_backfill(
    job=sys.argv[1], start=date(2017, 1, 1), end=date(2017, 2, 28), dry_run=True, return_state=True
)
print(state.type.value)
"""
"""A dry-run backfill with no block anywhere: nothing but the flow registers the block type."""


def block_type_on(server: PrefectServer) -> dict[str, object] | None:
    import httpx

    answer = httpx.get(f"{server.api_url}/block_types/slug/cml-credentials", timeout=30)
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    found: dict[str, object] = answer.json()
    return found


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


# --- the block type, registered by the flows -----------------------------------------------------


def test_a_first_backfill_lists_the_block_type_in_the_catalogue(
    prefect_ui_server: PrefectServer,
    page: Page,
    shots: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a fresh server (this test runs first: the `backfill` fixture saves a block, which
    registers its type too), the catalogue has no CML Credentials until a flow runs; then it
    has, without `prefect block register`."""
    assert block_type_on(prefect_ui_server) is None, (
        "CML Credentials registered before any flow ran: this test must run before the "
        "`backfill` fixture (first in the module)"
    )
    root = tmp_path_factory.mktemp("ui-register")
    done = subprocess.run(
        [sys.executable, "-c", DRY_BACKFILL, "http://127.0.0.1:9/alice/risk-analysis/jobs/208"],
        env=machine_env(prefect_ui_server, root, "laptop"),
        cwd=root / "laptop" / "work",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("COMPLETED"), (
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    block_type = block_type_on(prefect_ui_server)
    assert block_type is not None and block_type["name"] == "CML Credentials"

    page.goto(f"{ui_root(prefect_ui_server)}/blocks/catalog")
    page.get_by_placeholder("Search blocks").fill("CML")
    card = page.locator(".p-card", has_text="CML Credentials")
    visible(card.get_by_text("CML Credentials", exact=True), "the catalogue's CML card", shots)
    shot(page, shots, "catalogue-after-first-backfill")


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


def test_the_variables_page_holds_one_readable_record_per_window(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    """Four months, one failed: four `cml` variables, each found by typing its month, its
    state in its value, its end the month's last day."""
    import httpx

    listed = httpx.post(
        f"{prefect_ui_server.api_url}/variables/filter",
        json={"variables": {"tags": {"all_": ["cml"]}}},
        timeout=30,
    ).json()
    assert sorted(v["name"][:43] for v in listed) == [
        f"cml-risk-analysis-208-2017-0{m}-01-2017-0{m}-{last}"
        for m, last in ((1, 31), (2, 28), (3, 31), (4, 30))
    ]
    page.goto(f"{ui_root(prefect_ui_server)}/variables")
    page.get_by_placeholder(re.compile("Search", re.IGNORECASE)).fill("2017-03")
    rows = page.locator("tr", has_text="cml-risk-analysis-208-2017-03-01-2017-03-31")
    visible(rows, "the record of 2017-03", shots)
    visible(rows.get_by_text("cml-job:risk-analysis/208"), "its readable tag", shots)
    visible(page.get_by_text("1 Variable", exact=True), "one variable found", shots)
    shot(page, shots, "variables")
    rows.get_by_role("button", name="click to view").click()
    visible(page.get_by_text(re.compile('"status":\\s*"started"')), "its state", shots)
    visible(page.get_by_text(re.compile('"window_end":\\s*"2017-03-31"')), "its end", shots)


# --- the report artifact and the emulator's pages it links to ---------------------------------


def test_artifact_table_links_open_the_emulators_run_and_job_pages(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    page.goto(f"{ui_root(prefect_ui_server)}/runs/flow-run/{backfill.flow_run_id}")
    open_tab(page, "Artifacts")
    progress = re.compile(r"^4 of 4 windows: 3 started, 1 start failed; [\d.]+ windows/min$")
    visible(page.get_by_text(progress), "progress artifact", shots)
    progress_key = "cml-backfill-progress-risk-analysis-208-2017-01-01-2017-04-30"
    visible(page.get_by_text(progress_key), f"the progress artifact {progress_key}", shots)
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
        assert run_link.inner_text() == engine_id, (
            f"{window}: the run link reads {run_link.inner_text()!r}, not the whole engine id "
            f"{engine_id} (screenshots in {shots})"
        )
        visible(row.get_by_text("started", exact=True), f"{window} result", shots)
    # Failures first, with what to run next; the job page once, above the table.
    failure = page.get_by_text(f"{FAILED}: start failed: {REASON}")
    visible(failure, "the failure first", shots)
    failure_box = failure.bounding_box()
    table_box = page.locator("table").first.bounding_box()
    assert failure_box and table_box and failure_box["y"] < table_box["y"], (
        f"the failure is not above the table (screenshots in {shots})"
    )
    visible(
        page.get_by_text("Resume: run the same backfill with --reprocess failed"), "resume", shots
    )
    job_links = page.locator("a[href$='/alice/risk-analysis/jobs/208']")
    assert job_links.count() == 1, f"the job page is linked {job_links.count()} times"
    shot(page, shots, "artifact")

    # Follow one run link and one job-page link, as a user clicks them (they open a new tab).
    engine_id = backfill.engine_ids["2017-03"]
    run_tab = follow(page, table.locator(f"a[href$='/runs/{engine_id}']"), shots)
    visible(run_tab.locator("h1", has_text=f"Run {engine_id} of {JOB_NAME}"), "run page", shots)
    visible(run_tab.get_by_text("2017-03-31", exact=True), "the run's END_DATE", shots)
    shot(run_tab, shots, "emulator-run-page")
    run_tab.close()

    job_tab = follow(page, job_links, shots)
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


# --- masked keys: the block's create and edit forms (Prefect's default UI, /v2) -----------------

V2_KEY = "v2-key-typed-in-the-edit-form"


def key_inputs(page: Page, shots: Path) -> tuple[Locator, Locator]:
    """The inputs under the titles "API v1 key" and "API v2 key" of a block form."""
    inputs = []
    for title in ("API v1 key", "API v2 key"):
        label = page.get_by_text(f"{title} (Optional)", exact=True)
        visible(label, f"the {title} field", shots)
        inputs.append(label.locator("xpath=following::input[1]"))
    return inputs[0], inputs[1]


def saved_block(server: PrefectServer, name: str) -> dict[str, object]:
    """The block document's data, secrets included, from the REST API (no Prefect client:
    Playwright's loop is running in this thread)."""
    import httpx

    answer = httpx.get(
        f"{server.api_url}/block_types/slug/cml-credentials/block_documents/name/{name}",
        params={"include_secrets": "true"},
        timeout=30,
    )
    answer.raise_for_status()
    data: dict[str, object] = answer.json()["data"]
    return data


def test_keys_are_password_inputs_in_the_create_and_edit_forms(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    """Prefect 3.9's default UI (`/` redirects to `/v2`): a block created with only the v1
    key through the form, then the v2 key added in its edit form; both keys are password
    inputs while typed, and both saves keep what the block reads back."""
    root = ui_root(prefect_ui_server)
    name = "ui-form-block"
    page.goto(f"{root}/v2/blocks/catalog")
    page.get_by_placeholder(re.compile("Search", re.IGNORECASE)).fill("CML")
    visible(page.get_by_text("CML Credentials", exact=True).first, "the catalogue's card", shots)
    page.goto(f"{root}/v2/blocks/catalog/cml-credentials/create")
    v1, v2 = key_inputs(page, shots)
    for key_input, title in ((v1, "API v1 key"), (v2, "API v2 key")):
        assert key_input.get_attribute("type") == "password", f"{title} ({shots})"
    page.locator("input[name='blockName']").fill(name)
    v1.fill(DEFAULT_V1_KEY)
    shot(page, shots, "block-create-form")
    page.get_by_role("button", name="Save").click()
    visible(page.get_by_text(name, exact=True).first, "the saved block's page", shots)
    data = saved_block(prefect_ui_server, name)
    assert data["api_key"] == DEFAULT_V1_KEY
    assert data.get("api_v2_key") is None
    assert DEFAULT_V1_KEY not in page.content()

    block_id = re.search(r"/blocks/block/([0-9a-f-]{36})", page.url)
    assert block_id, page.url
    page.goto(f"{root}/v2/blocks/block/{block_id.group(1)}/edit")
    v1, v2 = key_inputs(page, shots)
    for key_input, title in ((v1, "API v1 key"), (v2, "API v2 key")):
        assert key_input.get_attribute("type") == "password", f"{title} ({shots})"
    assert DEFAULT_V1_KEY not in page.content()
    v2.fill(V2_KEY)
    shot(page, shots, "block-edit-form")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r"/blocks/block/[0-9a-f-]{36}$"))
    data = saved_block(prefect_ui_server, name)
    assert (data["api_key"], data["api_v2_key"]) == (DEFAULT_V1_KEY, V2_KEY)
    page.reload()
    visible(page.get_by_text("API v2 key", exact=True), "the saved block's fields", shots)
    masked = page.get_by_text(re.compile(r"^\*{8,}$"))
    visible(masked.nth(1), "both keys masked on the block's page", shots)
    assert V2_KEY not in page.content() and DEFAULT_V1_KEY not in page.content()
    shot(page, shots, "block-after-edit")


# --- the run form: parameters titled, the credentials picker named ----------------------------

RUN_FORM_TITLES = [
    "Job page URL",
    "Window cadence and dates",
    "Cadence",
    "Calendar unit",
    "Windows back (lag)",
    "CML credentials",
]


def test_run_form_shows_parameter_titles_not_names(
    prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    """A `cml-window-run` deployment's run form (made through the REST API with the flow's
    parameter schema, as `prefect deploy` sends it), in both UIs."""
    import httpx
    from prefect.utilities.callables import parameter_schema

    from cml_tasks.prefect.window_run import cml_window_run

    api = prefect_ui_server.api_url
    flow_id = httpx.post(f"{api}/flows/", json={"name": cml_window_run.name}, timeout=30).json()[
        "id"
    ]
    created = httpx.post(
        f"{api}/deployments/",
        json={
            "name": "ui-run-form",
            "flow_id": flow_id,
            "entrypoint": "cml_tasks.prefect.window_run:cml_window_run",
            "parameter_openapi_schema": parameter_schema(
                cml_window_run.fn
            ).model_dump_for_openapi(),
        },
        timeout=30,
    )
    created.raise_for_status()
    deployment_id = created.json()["id"]
    root = ui_root(prefect_ui_server)
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        page.goto(f"{root}{prefix}/deployments/deployment/{deployment_id}/run")
        for title in RUN_FORM_TITLES:
            visible(
                page.get_by_text(re.compile(f"^{re.escape(title)}( \\(Optional\\))?$")).first,
                f"{ui} run form: {title!r}",
                shots,
            )
        shot(page, shots, f"run-form-{ui}", full_page=True)
        page.get_by_text(re.compile(r"^CML credentials")).first.scroll_into_view_if_needed()
        shot(page, shots, f"run-form-{ui}-credentials")
        if ui == "v2":  # its switch between a saved block and none names each choice
            choice = page.get_by_text("Saved CML Credentials block", exact=True)
            visible(choice, "the saved-block choice", shots)
            assert page.get_by_text("CMLCredentials").count() == 0


# --- the event feed ---------------------------------------------------------------------------


def test_event_cards_name_the_run_and_the_failed_window_with_its_reason(
    backfill: Backfill, prefect_ui_server: PrefectServer, page: Page, shots: Path
) -> None:
    """In the Event Feed of Prefect's default UI, a run's card names the run (job, window, run
    id), not its resource id, and a failed window's card names its reason; each event's payload
    holds the run's, job's and project's page URLs or the whole reason."""
    import httpx

    def events(name: str, count: int) -> list[dict[str, Any]]:
        """The server's `name` events, once it has stored `count` (it stores them in batches)."""
        body = {"filter": {"event": {"name": [name]}}, "limit": 50}
        for _ in range(60):
            answer = httpx.post(f"{prefect_ui_server.api_url}/events/filter", json=body, timeout=30)
            answer.raise_for_status()
            found: list[dict[str, Any]] = answer.json()["events"]
            if len(found) >= count:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{len(found)} {name} events stored after 30 s, not {count}")

    engine_id = backfill.engine_ids["2017-03"]
    job_url = backfill.emulator.job_url("alice", "risk-analysis", "208")
    started = {e["payload"]["window"]: e["payload"] for e in events("cml.run.started", 3)}
    assert started["2017-03"] == {
        "job": JOB,
        "job_url": job_url,
        "project_url": job_url.removesuffix("/jobs/208"),
        "window": "2017-03",
        "run_id": engine_id,
        "run_url": f"{job_url}/runs/{engine_id}",
        "start": "started",
    }
    [failed] = events("cml.window.start-failed", 1)
    assert failed["payload"] == {
        "job": JOB,
        "job_url": job_url,
        "project_url": job_url.removesuffix("/jobs/208"),
        "window": FAILED,
        "reason": REASON,
    }

    shown = json.dumps(["cml.run.started", "cml.window.start-failed"])
    page.goto(f"{ui_root(prefect_ui_server)}/v2/events?events={quote(shown)}")
    run_name = page.get_by_text(f"{JOB} 2017-03 run {engine_id}", exact=True)
    for _ in range(3):  # the feed's first query may miss events stored just before
        with suppress(AssertionError):
            visible(run_name, "the run's card", shots)
            break
        page.reload()
    visible(run_name, "the run's name on its cml.run.started card", shots)
    assert page.get_by_text(f"cml.run.{engine_id}").count() == 0, (
        f"a card shows the resource id cml.run.{engine_id} (screenshots in {shots})"
    )
    failed_name = page.get_by_text(f"{JOB} {FAILED}: {REASON}", exact=True)
    visible(failed_name, "the failed window's reason on its card", shots)
    failed_name.scroll_into_view_if_needed()
    shot(page, shots, "events")
