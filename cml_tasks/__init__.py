"""Run Cloudera Machine Learning (CML) jobs from Prefect.

This module imports no Prefect: the client, settings and windows work without it. Everything
that needs Prefect (tasks, flows, the credentials block) lives in `cml_tasks.prefect`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_tasks._version import __version__

if TYPE_CHECKING:
    from cml_tasks._retry import RetryPolicy, set_testing
    from cml_tasks.client import AsyncCMLClient, CMLClient
    from cml_tasks.errors import (
        CMLAuthError,
        CMLConfigError,
        CMLError,
        CMLHTTPError,
        CMLInputError,
        CMLNotFoundError,
        CMLOutcomeUnknown,
        CMLProtocolError,
        CMLRecordError,
        CMLRequestRejected,
        CMLServerError,
        CMLThrottled,
        CMLTLSError,
        CMLTransportError,
        CMLWaitCancelled,
    )
    from cml_tasks.job import JobRef
    from cml_tasks.models import JobRun, RunPage, StartedRun
    from cml_tasks.run_errors import (
        CMLRunError,
        CMLRunFailed,
        CMLRunSkipped,
        CMLRunStopped,
        CMLRunTimedOut,
        CMLWaitTimeout,
    )
    from cml_tasks.run_status import RunStatus
    from cml_tasks.settings import CMLSettings

_HOMES = {
    "RetryPolicy": "_retry",
    "set_testing": "_retry",
    "AsyncCMLClient": "client",
    "CMLClient": "client",
    "JobRef": "job",
    "JobRun": "models",
    "RunPage": "models",
    "StartedRun": "models",
    "RunStatus": "run_status",
    "CMLSettings": "settings",
    **dict.fromkeys(
        [
            "CMLRunError",
            "CMLRunFailed",
            "CMLRunSkipped",
            "CMLRunStopped",
            "CMLRunTimedOut",
            "CMLWaitTimeout",
        ],
        "run_errors",
    ),
}
"""Where each public name lives: imported on first use, so `cml-jobs --help` and the errors
load no httpx or pydantic."""


def __getattr__(name: str) -> object:
    module = _HOMES.get(name) or ("errors" if name.startswith("CML") else None)
    if module is None:
        raise AttributeError(f"module 'cml_tasks' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"cml_tasks.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncCMLClient",
    "CMLAuthError",
    "CMLClient",
    "CMLConfigError",
    "CMLError",
    "CMLHTTPError",
    "CMLInputError",
    "CMLNotFoundError",
    "CMLOutcomeUnknown",
    "CMLProtocolError",
    "CMLRecordError",
    "CMLRequestRejected",
    "CMLRunError",
    "CMLRunFailed",
    "CMLRunSkipped",
    "CMLRunStopped",
    "CMLRunTimedOut",
    "CMLServerError",
    "CMLSettings",
    "CMLTLSError",
    "CMLThrottled",
    "CMLTransportError",
    "CMLWaitCancelled",
    "CMLWaitTimeout",
    "JobRef",
    "JobRun",
    "RetryPolicy",
    "RunPage",
    "RunStatus",
    "StartedRun",
    "__version__",
    "set_testing",
]
