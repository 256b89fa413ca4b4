"""A job run's life, computed from its timestamps rather than driven by background tasks.

Status is a pure function of "now", so a run needs no timers, never races the server's
shutdown, and polling at any rate sees a consistent history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ._config import JobConfig, Outcome, OutcomeRule, ProjectConfig, UserConfig


class Status(StrEnum):
    """API v2 ``EngineStatus``."""

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

    @property
    def short(self) -> str:
        """The lower-case name ``search_filter`` uses: ``ENGINE_RUNNING`` -> ``running``."""
        return self.value.removeprefix("ENGINE_").lower()


TERMINAL = frozenset(
    {Status.STOPPED, Status.SUCCEEDED, Status.FAILED, Status.TIMEDOUT, Status.SKIPPED}
)

_OUTCOMES = {
    "succeeded": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "timedout": Status.TIMEDOUT,
    "skipped": Status.SKIPPED,
}

# Which JobRun timestamp field records entering each status.
TIMESTAMP_FIELDS = {
    Status.SCHEDULING: "scheduling_at",
    Status.STARTING: "starting_at",
    Status.RUNNING: "running_at",
}


def planned_end(
    job: JobConfig,
    environment: Mapping[str, str],
    rules: Sequence[OutcomeRule],
    default: Outcome,
) -> tuple[Outcome, float]:
    """How a run started with ``environment`` will end, and its running seconds (unscaled).

    The first rule whose ``when`` all match wins; otherwise ``default`` and the job's
    ``running_seconds``. Decided once, at the start, so later rule changes never rewrite a
    run's history.
    """
    for rule in rules:
        if rule.matches(environment):
            seconds = rule.running_seconds
            return rule.outcome, job.running_seconds if seconds is None else seconds
    return default, job.running_seconds


@dataclass
class Run:
    """One run of a job. Times are monotonic-clock seconds; durations already time-scaled.

    ``outcome`` and ``running_seconds`` (unscaled) were picked at creation by
    :func:`planned_end`; the job's other durations come from ``job``.
    """

    id: str
    api: Literal["v1", "v2"]
    creator: UserConfig
    project: ProjectConfig
    job: JobConfig
    environment: dict[str, str]
    arguments: str
    created: float
    time_scale: float
    outcome: Outcome
    running_seconds: float
    stop_requested_at: float | None = None

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def transitions(self) -> list[tuple[float, Status]]:
        """Every (time, status) the run enters, in order - including ones still in the future."""
        job = self.job
        starting = self.created + self._scaled(job.scheduling_seconds)
        natural: list[tuple[float, Status]] = [(self.created, Status.SCHEDULING)]
        if self.outcome == "skipped":
            natural.append((starting, Status.SKIPPED))
        else:
            running = starting + self._scaled(job.starting_seconds)
            outcome = _OUTCOMES[self.outcome]
            duration = self._scaled(self.running_seconds)
            if job.timeout_seconds is not None and self._scaled(job.timeout_seconds) < duration:
                duration, outcome = self._scaled(job.timeout_seconds), Status.TIMEDOUT
            natural += [
                (starting, Status.STARTING),
                (running, Status.RUNNING),
                (running + duration, outcome),
            ]
        stop = self.stop_requested_at
        if stop is None:
            return natural
        return [
            *((t, s) for t, s in natural if t <= stop),
            (stop, Status.STOPPING),
            (stop + self._scaled(job.stopping_seconds), Status.STOPPED),
        ]

    def status(self, now: float) -> Status:
        return [s for t, s in self.transitions() if t <= now][-1]

    def reached(self, now: float) -> dict[str, float]:
        """Timestamp field -> time for the phases reached by ``now``; unreached ones are absent."""
        out: dict[str, float] = {}
        for t, status in self.transitions():
            if t > now:
                break
            if status in TERMINAL:
                out["finished_at"] = t
            elif status in TIMESTAMP_FIELDS:
                out[TIMESTAMP_FIELDS[status]] = t
        return out

    def request_stop(self, now: float) -> None:
        """Stop a run that is not over yet; a finished or already stopping run is unchanged."""
        if self.stop_requested_at is None and self.status(now) not in TERMINAL:
            self.stop_requested_at = now
