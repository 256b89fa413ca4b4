"""The concrete flow in `flows/`, on a temporary Prefect API and the emulator."""

from __future__ import annotations

import importlib.util
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY, Emulator, default_config

FLOW_FILE = Path(__file__).resolve().parents[1] / "flows" / "monthly_followed.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("monthly_followed", FLOW_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.monthly_followed


@pytest.mark.usefixtures("prefect_api")
def test_a_month_is_followed_to_its_end_and_never_started_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cml_tasks.prefect import tasks

    monkeypatch.setenv("CML_API_KEY", DEFAULT_V1_KEY)
    monkeypatch.setenv("CML_API_V2_KEY", DEFAULT_V2_KEY)
    tasks.shared_poller.cache_clear()
    monthly_followed = _load()
    with Emulator(default_config(time_scale=0.3)) as cml:
        url = cml.job_url("alice", "risk-analysis", "208")
        first = monthly_followed(url, date(2017, 1, 1), poll_interval=0.05)
        again = monthly_followed(url, date(2017, 1, 1), poll_interval=0.05)
        runs = cml.runs()
    tasks.shared_poller.cache_clear()
    assert first.result == "succeeded"
    assert [run["environment"] for run in runs] == [
        {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}
    ]
    assert again.result == "skipped" and "already succeeded" in str(again.reason)
