"""Fault injection: which calls to which endpoint misbehave, and how.

A client is only as good as its handling of a server that is slow, throttles, fails, or hangs
up - before doing the work (``drop``) or after (``lost_answer``, the case that makes a blind
retry start a job twice) - or that answers garbage (``answer``: any status, headers and body,
e.g. a 200 that is not JSON, a 20 MB body, a redirect) or dribbles its answer out (``drip``).
Faults make those cases reproducible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENDPOINTS: tuple[str, ...] = (
    "v1.start",
    "v2.list_projects",
    "v2.get_project",
    "v2.list_jobs",
    "v2.get_job",
    "v2.create_run",
    "v2.list_runs",
    "v2.get_run",
    "v2.stop_run",
)
"""Names of the API endpoints faults can target (``"*"`` targets all of them)."""

FaultKind = Literal[
    "latency", "429", "500", "502", "503", "504", "drop", "lost_answer", "answer", "drip"
]


class Fault(BaseModel):
    """One way to misbehave, and when.

    Which calls: every matching call, unless ``calls`` (1-based numbers of the calls to
    ``endpoint`` counted from when the fault was added) and/or ``rate`` (probability, drawn from
    a generator seeded with ``seed``) narrow it; ``times`` caps how often it fires in total.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = "*"
    kind: FaultKind
    rate: float | None = Field(default=None, ge=0.0, le=1.0)
    calls: tuple[int, ...] | None = None
    times: int | None = Field(default=None, ge=1)
    seed: int | None = None
    seconds: float = Field(
        default=1.0, ge=0.0, description="delay of a `latency` fault; per byte of a `drip`"
    )
    retry_after: int = Field(default=1, ge=0, description="Retry-After of a `429` fault")
    status: int = Field(default=200, ge=100, le=599, description="status of an `answer` fault")
    body: str = Field(default="", description="body of an `answer` fault")
    body_repeat: int = Field(
        default=1, ge=1, description="`body` repeated this many times (huge answers)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="headers of an `answer` fault"
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _status_as_text(cls, value: object) -> object:
        """Let config files write ``kind = 503`` as well as ``kind = "503"``."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, value: str) -> str:
        if value != "*" and value not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {value!r}; use '*' or one of {', '.join(ENDPOINTS)}"
            )
        return value

    @field_validator("calls")
    @classmethod
    def _positive_calls(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(n < 1 for n in value):
            raise ValueError("call numbers start at 1")
        return value


@dataclass
class _Armed:
    """A fault plus its own counters and random generator (so each is reproducible alone)."""

    fault: Fault
    rng: random.Random
    seen: int = 0
    fired: int = 0

    def fires(self) -> bool:
        fault = self.fault
        if fault.times is not None and self.fired >= fault.times:
            return False
        if fault.calls is not None and self.seen not in fault.calls:
            return False
        return fault.rate is None or self.rng.random() < fault.rate


@dataclass
class FaultPlan:
    """The active faults; shared by the server thread and the caller's thread."""

    _armed: list[_Armed] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(_Armed(fault, random.Random(fault.seed)))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def draw(self, endpoint: str) -> Fault | None:
        """Count this call against every matching fault; return the first one that fires."""
        chosen: Fault | None = None
        with self._lock:
            for armed in self._armed:
                if armed.fault.endpoint not in ("*", endpoint):
                    continue
                armed.seen += 1
                if chosen is None and armed.fires():
                    armed.fired += 1
                    chosen = armed.fault
        return chosen
