"""A three-step monthly pipeline: ingest, then train, then score, each month once per step.

Backfill a range, or serve the monthly schedule (02:00 on the 1st, Berlin time: last month):

    python flows/risk_pipeline.py 2017-01-01 2017-06-30
    python flows/risk_pipeline.py

`CML_PROJECT_URL` names the project (default: the documentation's example workspace);
`CML_API_KEY` and `CML_API_V2_KEY` come from the environment, as for every flow here.
"""

import os
import sys
from datetime import date

from prefect.schedules import Cron

from cml_tasks.prefect import Pipeline, Step, cml_pipeline_backfill, cml_pipeline_run
from cml_tasks.window_options import WindowOptions

JOBS = os.environ.get("CML_PROJECT_URL", "https://ml.example.com/alice/risk-analysis") + "/jobs"

risk = Pipeline(
    "risk-monthly",
    options=WindowOptions(every="month", timezone="Europe/Berlin"),
    steps=[
        Step("ingest", f"{JOBS}/208"),
        Step("train", f"{JOBS}/212", after=["ingest"]),
        Step("score", f"{JOBS}/213", after=["train"], environment={"REGION": "eu"}),
    ],
)

if __name__ == "__main__":
    if len(sys.argv) == 3:
        start, end = (date.fromisoformat(day) for day in sys.argv[1:])
        cml_pipeline_backfill(risk, start, end)
    else:
        monthly = Cron("0 2 1 * *", timezone="Europe/Berlin")
        cml_pipeline_run.serve("risk-monthly", schedules=[monthly], parameters={"pipeline": risk})
