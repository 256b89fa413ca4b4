"""The `cml-backfill` flow's own parameters, as a deployment or the UI would pass them: the
flow must refuse what `cml-jobs backfill` refuses, before any request (dry run or not)."""

from __future__ import annotations

from datetime import date

import pytest

JOB = "https://cml.example.com/alice/risk-analysis/jobs/208"


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("max_wait", [-1.0, 0.0, float("nan")])
def test_a_max_wait_that_is_not_positive_is_refused(max_wait: float) -> None:
    from cml_tasks.prefect.backfill import cml_backfill

    state = cml_backfill(
        job=JOB,
        start=date(2017, 1, 1),
        end=date(2017, 1, 31),
        follow=True,
        max_wait=max_wait,
        dry_run=True,
        return_state=True,
    )
    assert state.is_failed(), state
    assert "max_wait" in str(state.message)
