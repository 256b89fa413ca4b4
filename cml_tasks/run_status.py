"""`RunStatus`: the states of a CML run (API v2 `EngineStatus`), in a module of its own so the
CLI can list them without loading pydantic."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """API v2 `EngineStatus`; an unknown future value reads as `UNKNOWN`: keep polling."""

    SCHEDULING = "ENGINE_SCHEDULING"
    STARTING = "ENGINE_STARTING"
    RUNNING = "ENGINE_RUNNING"
    STOPPING = "ENGINE_STOPPING"
    STOPPED = "ENGINE_STOPPED"
    UNKNOWN = "ENGINE_UNKNOWN"
    SUCCEEDED = "ENGINE_SUCCEEDED"
    FAILED = "ENGINE_FAILED"
    TIMEDOUT = "ENGINE_TIMEDOUT"
    SKIPPED = "ENGINE_SKIPPED"

    @classmethod
    def _missing_(cls, value: object) -> RunStatus:
        return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def words(self) -> str:
        """How a person says it: `succeeded`, `timed out`, `is running`... for sentences such
        as "CML run 1kia is running" and "CML run 1kia succeeded"."""
        return _WORDS.get(self, f"is {self.short}")

    @property
    def short(self) -> str:
        """`ENGINE_RUNNING` -> `running`, the form `search_filter` and people use."""
        return self.value.removeprefix("ENGINE_").lower()


_TERMINAL = frozenset(
    {
        RunStatus.STOPPED,
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.TIMEDOUT,
        RunStatus.SKIPPED,
    }
)


_WORDS = {
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.TIMEDOUT: "timed out",
    RunStatus.STOPPED: "was stopped",
    RunStatus.SKIPPED: "was skipped",
}
