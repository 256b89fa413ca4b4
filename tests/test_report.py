"""A single job's backfill report as the UI shows it: failures first, what to run next, then
every window compactly (no server: the report is pure)."""

from __future__ import annotations

from datetime import date

from cml_tasks.backfill import BackfillReport, WindowOutcome, WindowResult

JOB = "https://ml.example.com/alice/risk-analysis/jobs/208"


def _outcome(month: int, result: WindowResult, **fields: str) -> WindowOutcome:
    return WindowOutcome(
        window=f"2017-0{month}",
        window_start=date(2017, month, 1),
        window_end=date(2017, month, 28),
        environment={},
        result=result,
        job_url=JOB,
        **fields,  # type: ignore[arg-type]
    )


def _report() -> BackfillReport:
    return BackfillReport(
        job_url=JOB,
        notes=["a note"],
        outcomes=[
            _outcome(1, WindowResult.STARTED, engine_id="80x3abcd", run_url=f"{JOB}/runs/80x3abcd"),
            _outcome(2, WindowResult.START_FAILED, reason="HTTP 400: bad | environment"),
            _outcome(
                3,
                WindowResult.OUTCOME_UNKNOWN,
                reason="outcome unknown: " + "the answer was lost " * 10,
                engine_id="q9z",
                run_url=f"{JOB}/runs/q9z",
            ),
            _outcome(4, WindowResult.SKIPPED, reason="started already (run 80x3abcd)"),
        ],
    )


def test_failures_come_first_with_what_to_run_next_then_a_compact_table() -> None:
    text = _report().markdown("Backfill of risk-analysis/208")
    lines = text.splitlines()
    assert lines[0] == (
        "### Backfill of risk-analysis/208: 4 windows: 1 started, 1 start failed, "
        "1 outcome unknown, 1 skipped"
    )
    assert text.count(JOB + ")") == 1  # the job page once (run links add /runs/...)
    assert "**Note**: a note." in text
    failed = lines.index("**Failed or unknown**:")
    table = lines.index("| window | result | run or reason |")
    assert failed < table
    assert lines[failed + 2] == "- 2017-02: start failed: HTTP 400: bad \\| environment"
    assert lines[failed + 3].startswith("- 2017-03: outcome unknown: outcome unknown: the answer")
    assert lines[failed + 3].endswith(f"(run [q9z]({JOB}/runs/q9z))")
    resume = lines[failed + 5]
    assert resume.startswith("Resume: run the same backfill with --reprocess failed")
    assert "CML\\_API\\_V2\\_KEY" in resume
    rows = lines[table + 2 :]
    assert rows[0] == f"| 2017-01 | started | [80x3abcd]({JOB}/runs/80x3abcd) |"
    assert len(rows[2]) < 120  # a long reason is cut in the table, whole above it
    assert rows[3] == "| 2017-04 | skipped | started already (run 80x3abcd) |"


def test_the_cml_status_column_only_when_runs_were_followed_and_no_hint_without_failures() -> None:
    followed = BackfillReport(
        job_url=JOB,
        outcomes=[
            _outcome(1, WindowResult.SUCCEEDED, run_status="succeeded", engine_id="a", run_url="u")
        ],
    )
    text = followed.markdown("Backfill of risk-analysis/208")
    assert "| window | result | CML status | run or reason |" in text
    assert "| 2017-01 | succeeded | succeeded | [a](u) |" in text
    assert followed.resume_hint() is None and "Resume" not in text
