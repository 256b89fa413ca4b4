"""Everything of `cml_tasks` that needs Prefect: tasks, flows, the credentials block, events.

Importing this package imports Prefect (about 2.5 s); `cml_tasks` itself never does. Every use
of a Prefect internal is in `_adapter.py`, pinned by `tests/test_prefect_adapter.py`.
"""

from __future__ import annotations

from cml_tasks.pipeline import Pipeline, PipelineFailed, PipelineReport, Step
from cml_tasks.prefect.backfill import cml_backfill
from cml_tasks.prefect.blocks import CMLCredentials
from cml_tasks.prefect.pipeline import cml_pipeline_backfill, cml_pipeline_run
from cml_tasks.prefect.tasks import arun_cml_job, follow_cml_run, run_cml_job, start_cml_job
from cml_tasks.prefect.window_run import cml_window_run
from cml_tasks.prefect.window_task import start_window
from cml_tasks.window_options import WindowOptions

__all__ = [
    "CMLCredentials",
    "Pipeline",
    "PipelineFailed",
    "PipelineReport",
    "Step",
    "WindowOptions",
    "arun_cml_job",
    "cml_backfill",
    "cml_pipeline_backfill",
    "cml_pipeline_run",
    "cml_window_run",
    "follow_cml_run",
    "run_cml_job",
    "start_cml_job",
    "start_window",
]
