"""A concrete flow composed from `cml_tasks`: one month of one job, followed to its end.

`cml-window-run` starts a window's run and returns; this flow starts it through API v2
(`CML_API_V2_KEY`) and waits, so the flow run ends as the CML run did. It goes through the
same per-window task as every schedule and backfill (`cml-window`: the window's record and
the project's limit), so a month already started is followed again, never started twice.
Copy it for a job of your own, or deploy it from the repository:

    python flows/monthly_followed.py https://ml.example.com/alice/risk-analysis/jobs/208 2017-01-01
"""

from __future__ import annotations

import sys
from datetime import date

from prefect import flow
from prefect.runtime import flow_run

from cml_tasks.backfill import WindowOutcome
from cml_tasks.prefect.project_limit import ensure_project_limit
from cml_tasks.prefect.tasks import resolve_settings
from cml_tasks.prefect.window_task import start_window
from cml_tasks.window_plan import plan_window_run


@flow(name="cml-monthly-followed")
def monthly_followed(
    job: str, month: date | None = None, poll_interval: float = 30.0, max_wait: float | None = None
) -> WindowOutcome:
    """Run `job` for `month` (its first day; default: the month before the scheduled time)
    with START_DATE/END_DATE, and follow the run until it ends."""
    scheduled = None if month is not None or flow_run.id is None else flow_run.scheduled_start_time
    plan = plan_window_run(job, window_start=month, scheduled_for=scheduled)
    settings = resolve_settings(None)
    ref = plan.job.with_host(settings.host)
    state = start_window(
        job=ref,
        planned=plan.planned(ref),
        credentials=settings,
        project_limit=ensure_project_limit(ref),
        follow=True,
        poll_interval=poll_interval,
        max_wait=max_wait,
        return_state=True,
    )
    outcome: WindowOutcome = state.result()  # a failed run raises its CMLRunError
    return outcome


if __name__ == "__main__":
    monthly_followed(sys.argv[1], date.fromisoformat(sys.argv[2]))
