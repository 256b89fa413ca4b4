"""The window flow on a temporary Prefect API and the emulator: which window, what is sent,
how the run is named, the artifact, and bad input failing before any request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator
from cml_tasks.errors import CMLConfigError, CMLInputError
from cml_tasks.prefect.window_run import cml_window_run
from cml_tasks.window_options import WindowOptions
from cml_tasks.window_plan import plan_window_run

BERLIN = ZoneInfo("Europe/Berlin")
JOB = "https://cml.example.com/alice/risk-analysis/jobs/208"
JANUARY = {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}


# --- the plan: pure, no Prefect run needed ---


def test_plan_from_scheduled_time_in_berlin() -> None:
    plan = plan_window_run(
        JOB,
        WindowOptions(timezone="Europe/Berlin"),
        scheduled_for=datetime(2017, 2, 1, 2, tzinfo=BERLIN),
    )
    assert plan.environment == JANUARY
    assert plan.run_name == "risk-analysis/208 2017-01"


def test_plan_reads_the_scheduled_time_in_the_cadence_zone() -> None:
    # 00:30 on 1 Feb in Berlin is still 31 Jan in UTC: the zone decides which month just ended.
    scheduled = datetime(2017, 2, 1, 0, 30, tzinfo=BERLIN)
    berlin = plan_window_run(JOB, WindowOptions(timezone="Europe/Berlin"), scheduled_for=scheduled)
    utc = plan_window_run(JOB, WindowOptions(timezone="UTC"), scheduled_for=scheduled)
    assert berlin.window.label == "2017-01"
    assert utc.window.label == "2016-12"


def test_plan_options() -> None:
    plan = plan_window_run(
        "https://cml.example.com/alice/risk-analysis/jobs/208",
        WindowOptions(
            every="week",
            week_start="sunday",
            start_var="FROM",
            end_var="UNTIL",
            date_format="%Y%m%d",
            inclusive_end=False,
            extra_environment={"MODE": "full"},
        ),
        lag=0,
        scheduled_for=datetime(2017, 1, 4, 12, tzinfo=ZoneInfo("UTC")),
    )
    assert plan.environment == {"FROM": "20170101", "UNTIL": "20170108", "MODE": "full"}


def test_explicit_window_is_one_window_of_the_cadence() -> None:
    assert plan_window_run(JOB, window_start=date(2017, 1, 1)).environment == JANUARY
    plan = plan_window_run(JOB, window_start=date(2017, 1, 1), window_end=date(2017, 1, 31))
    assert plan.environment == JANUARY
    assert plan.scheduled_for is None
    quarter = plan_window_run(
        JOB,
        WindowOptions(every="quarter"),
        window_start=date(2017, 4, 1),
        window_end=date(2017, 6, 30),
    )
    assert quarter.run_name == "risk-analysis/208 2017-Q2"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"job": "risk-analysis/208"}, "Invalid job"),
        ({"every": "fortnightly"}, "unknown frequency"),
        ({"every": "0 months"}, "at least 1"),
        ({"timezone": "Europe/Berln"}, "Europe/Berlin"),
        ({"week_start": "someday"}, "week start"),
        ({"lag": -1}, "lag"),
        ({"start_var": "1X"}, "invalid environment variable name"),
        ({"end_var": "START_DATE"}, "must differ"),
        ({"date_format": "month"}, "renders no date"),
        ({"extra_environment": {"START_DATE": "x"}}, "may not override"),
        ({"window_start": date(2017, 1, 2)}, "the window containing it is 2017-01-01..2017-01-31"),
        (
            {"window_start": date(2017, 1, 1), "window_end": date(2017, 1, 30)},
            "is 2017-01-01..2017-01-31",
        ),
        ({"window_end": date(2017, 1, 31)}, "without window_start"),
        ({"scheduled_for": None}, "no window"),
    ],
)
def test_plan_rejects_bad_input(options: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {
        "job": JOB,
        "scheduled_for": datetime(2017, 2, 1, tzinfo=ZoneInfo("UTC")),
    }
    arguments.update(options)
    window_options = {
        k: arguments.pop(k) for k in list(arguments) if k in WindowOptions.model_fields
    }
    with pytest.raises(CMLInputError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        plan_window_run(**arguments, options=WindowOptions.checked(**window_options))


# --- the flow, on the session's Prefect API and a real emulator ---


@pytest.fixture
def cml() -> Iterator[Emulator]:
    """A fresh emulator per test: a new port is a new workspace, so the windows these tests
    start (January, again and again) have no record yet - a window is started only once."""
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def job_url(cml: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    return cml.job_url("alice", "risk-analysis", "208")


def _schedule(scheduled: datetime, parameters: dict[str, Any]) -> Any:
    """A flow run scheduled for `scheduled`, as a deployment's schedule would create it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        return client.create_flow_run(
            cml_window_run, parameters=parameters, state=Scheduled(scheduled_time=scheduled)
        )


def _execute(flow_run: Any, parameters: dict[str, Any]) -> tuple[Any, Any]:
    """Execute an existing flow run here, as a worker would: its result and final record."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    result = run_flow(cml_window_run, flow_run=flow_run, parameters=parameters)
    with get_client(sync_client=True) as client:
        return result, client.read_flow_run(flow_run.id)


def _run_scheduled(scheduled: datetime, parameters: dict[str, Any]) -> tuple[Any, Any]:
    return _execute(_schedule(scheduled, parameters), parameters)


def _artifact_for(flow_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return artifact


@pytest.mark.usefixtures("prefect_api")
def test_scheduled_run_sends_the_month_that_ended(cml: Emulator, job_url: str) -> None:
    before = len(cml.runs())
    run, flow_run = _run_scheduled(
        datetime(2017, 2, 1, 2, tzinfo=BERLIN),
        {"job": job_url, "options": {"timezone": "Europe/Berlin"}},
    )
    records = cml.runs()[before:]
    assert [r["environment"] for r in records] == [JANUARY]
    assert run.environment == JANUARY
    assert run.engine_id == records[0]["id"]
    assert flow_run.name == "risk-analysis/208 2017-01"
    assert flow_run.state.is_completed()

    artifact = _artifact_for(flow_run.id)
    assert artifact.key == "cml-window-risk-analysis-208"
    markdown = artifact.data
    for expected in (run.engine_id, job_url, "START_DATE", "2017-01-31", "2017-02-01T02:00"):
        assert expected in markdown
    assert DEFAULT_V1_KEY not in markdown


@pytest.mark.usefixtures("prefect_api")
def test_late_run_still_sends_its_scheduled_window(cml: Emulator, job_url: str) -> None:
    # Scheduled for 1 March 2017 and executed years later: February, not last month.
    before = len(cml.runs())
    _, flow_run = _run_scheduled(
        datetime(2017, 3, 1, 2, tzinfo=BERLIN),
        {"job": job_url, "options": {"timezone": "Europe/Berlin"}},
    )
    assert [r["environment"] for r in cml.runs()[before:]] == [
        {"START_DATE": "2017-02-01", "END_DATE": "2017-02-28"}
    ]
    assert flow_run.name == "risk-analysis/208 2017-02"


@pytest.mark.usefixtures("prefect_api")
def test_retried_run_keeps_its_window(
    cml: Emulator, job_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    # The first attempt fails (no API key), before any request; then retried "now", as the
    # UI's Retry does: still January, the window of its schedule.
    monkeypatch.delenv("CML_API_KEY")
    parameters = {"job": job_url, "options": {"timezone": "Europe/Berlin"}}
    before = len(cml.runs())
    flow_run = _schedule(datetime(2017, 2, 1, 2, tzinfo=BERLIN), parameters)
    with pytest.raises(CMLConfigError):
        _execute(flow_run, parameters)
    assert len(cml.runs()) == before

    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        retry = client.read_flow_run(flow_run.id)
    run, final = _execute(retry, parameters)
    assert [r["environment"] for r in cml.runs()[before:]] == [JANUARY]
    assert run.environment == JANUARY
    assert (final.name, final.run_count) == ("risk-analysis/208 2017-01", 2)


@pytest.mark.usefixtures("prefect_api")
def test_explicit_window_with_extras(cml: Emulator, job_url: str) -> None:
    before = len(cml.runs())
    run = cml_window_run(
        job=job_url,
        options=WindowOptions(every="quarter", extra_environment={"MODE": "rerun"}),
        window_start=date(2016, 10, 1),
        window_end=date(2016, 12, 31),
    )
    expected = {"START_DATE": "2016-10-01", "END_DATE": "2016-12-31", "MODE": "rerun"}
    assert [r["environment"] for r in cml.runs()[before:]] == [expected]
    assert run.environment == expected


@pytest.mark.usefixtures("prefect_api")
def test_credentials_from_a_block(
    cml: Emulator, job_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cml_tasks.prefect.blocks import CMLCredentials

    monkeypatch.delenv("CML_API_KEY")
    CMLCredentials(api_key=DEFAULT_V1_KEY).save("window-flow-test", overwrite=True)
    before = len(cml.runs())
    credentials = CMLCredentials.load("window-flow-test")
    cml_window_run(job=job_url, window_start=date(2017, 1, 1), credentials=credentials)
    assert [r["environment"] for r in cml.runs()[before:]] == [JANUARY]


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    "options",
    [
        {"job": "alice/risk-analysis"},
        {"options": {"every": "fortnightly"}},
        {"options": {"timezone": "Mars/Olympus"}},
        {"window_start": date(2017, 1, 15)},
    ],
)
def test_bad_input_fails_before_any_request(
    cml: Emulator, job_url: str, options: dict[str, Any]
) -> None:
    before = len(cml.requests())
    arguments: dict[str, Any] = {"job": job_url, "window_start": date(2017, 1, 1), **options}
    state = cml_window_run(**arguments, return_state=True)
    assert state.is_failed()
    with pytest.raises(CMLInputError):
        state.result()
    assert len(cml.requests()) == before


# --- scheduled runs and backfills share each window's record ---


@pytest.mark.usefixtures("prefect_api")
def test_scheduled_run_of_a_backfilled_window_starts_nothing(cml: Emulator, job_url: str) -> None:
    from cml_tasks.prefect.backfill import cml_backfill

    backfill = cml_backfill(job=job_url, start=date(2017, 1, 1), end=date(2017, 3, 31))
    (january,) = [o for o in backfill.outcomes if o.window == "2017-01"]
    before = len(cml.runs())
    run, flow_run = _run_scheduled(
        datetime(2017, 2, 1, 2, tzinfo=BERLIN),
        {"job": job_url, "options": {"timezone": "Europe/Berlin"}},
    )
    assert len(cml.runs()) == before == 3  # nothing started
    assert flow_run.state.is_completed()
    assert run.engine_id == january.engine_id  # the window's run, started by the backfill
    assert run.environment == JANUARY
    markdown = _artifact_for(flow_run.id).data
    assert "nothing started" in markdown and "already started" in markdown
    assert january.engine_id is not None and january.engine_id in markdown


@pytest.mark.usefixtures("prefect_api")
def test_backfill_skips_a_window_its_schedule_started(cml: Emulator, job_url: str) -> None:
    from cml_tasks.prefect.backfill import cml_backfill

    run, _ = _run_scheduled(
        datetime(2017, 3, 1, 2, tzinfo=BERLIN),
        {"job": job_url, "options": {"timezone": "Europe/Berlin"}},
    )
    report = cml_backfill(job=job_url, start=date(2017, 1, 1), end=date(2017, 3, 31))
    assert [o.result for o in report.outcomes] == ["started", "skipped", "started"]
    assert f"engine {run.engine_id}" in str(report.outcomes[1].reason)
    starts = sorted(r["environment"]["START_DATE"] for r in cml.runs())
    assert starts == ["2017-01-01", "2017-02-01", "2017-03-01"]
