"""A CML emulator: a real HTTP server speaking Cloudera Machine Learning's Jobs API v1 and the
jobs part of API v2, with seeded users, projects and jobs, time-driven runs, and fault
injection - so clients can be tested, and demoed, without a CML workspace.

    with Emulator() as emu:
        emu.url  # -> http://127.0.0.1:<port>
"""

from ._config import (
    DEFAULT_PROJECT_ID,
    DEFAULT_V1_KEY,
    DEFAULT_V2_KEY,
    ConfigError,
    EmulatorConfig,
    JobConfig,
    Outcome,
    OutcomeRule,
    ProjectConfig,
    TeamConfig,
    UserConfig,
    default_config,
    load_config,
)
from ._connection import ConnectionDropError
from ._faults import ENDPOINTS, Fault, FaultKind
from ._server import Emulator, serve
from ._state import RequestRecord, RunRecord

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_V1_KEY",
    "DEFAULT_V2_KEY",
    "ENDPOINTS",
    "ConfigError",
    "ConnectionDropError",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "FaultKind",
    "JobConfig",
    "Outcome",
    "OutcomeRule",
    "ProjectConfig",
    "RequestRecord",
    "RunRecord",
    "TeamConfig",
    "UserConfig",
    "default_config",
    "load_config",
    "serve",
]
