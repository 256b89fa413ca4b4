"""Shared fixtures. Prefect is configured here, before anything imports it: a temporary
PREFECT_HOME and no telemetry (the test machines have no internet)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="cml-prefect-tests-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in [name for name in os.environ if name.startswith("CML_")]:
    del os.environ[_name]  # a developer's own CML settings must not leak into tests


# --- Prefect: one temporary API server for the whole session (it takes ~15 s to start) ---


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real, temporary Prefect API (SQLite) shared by every test that asks for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
