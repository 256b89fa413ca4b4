"""Run Cloudera Machine Learning (CML) jobs from Prefect.

This module imports no Prefect: the client, settings and windows work without it. Everything
that needs Prefect (tasks, flows, the credentials block) lives in `cml_tasks.prefect`.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
    CMLRequestRejected,
    CMLRunError,
    CMLRunFailed,
    CMLRunSkipped,
    CMLRunStopped,
    CMLRunTimedOut,
    CMLServerError,
    CMLThrottled,
    CMLTLSError,
    CMLTransportError,
    CMLWaitCancelled,
    CMLWaitTimeout,
)
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun, RunPage, RunStatus, StartedRun
from cml_tasks.settings import CMLSettings

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
