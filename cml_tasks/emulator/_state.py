"""The emulator's world: seeded users, projects and jobs, plus the runs and requests it has seen.

Shared by the server thread and the caller's thread (``Emulator.runs()``), hence one lock.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, TypedDict, get_args

from ._config import EmulatorConfig, JobConfig, Outcome, OutcomeRule, ProjectConfig, UserConfig
from ._faults import FaultPlan
from ._runs import Run, planned_end

_ID_ALPHABET = string.ascii_lowercase + string.digits


class Person(TypedDict):
    """API v2 ``ShortUser``: a user, or a team as a project owner."""

    username: str
    name: str
    email: str


class RunRecord(TypedDict):
    """Admin view of a run (``GET /_emulator/runs``): what a test wants to assert on."""

    id: str
    api: Literal["v1", "v2"]
    username: str
    project: str
    project_id: str
    job_id: str
    environment: dict[str, str]
    arguments: str
    status: str
    created_at: str
    stop_requested: bool


class RequestRecord(TypedDict):
    """One request as seen by the server (``GET /_emulator/requests``)."""

    request_id: str
    timestamp: str
    endpoint: str | None
    method: str
    path: str
    query: str
    status: int | Literal["dropped"]
    fault: str | None


def rfc3339(moment: datetime) -> str:
    """UTC with a ``Z`` and microseconds, as proto3 JSON renders a Timestamp."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EmulatorState:
    """Lookups over the seed data and the mutable record of runs and requests."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.faults = FaultPlan()
        for fault in config.faults:
            self.faults.add(fault)
        self._clock = clock
        self._epoch = (clock(), datetime.now(UTC))
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        # (project id, job id) -> outcome rules and default set at runtime, replacing the config's
        self._outcomes: dict[tuple[str, str], tuple[tuple[OutcomeRule, ...], Outcome]] = {}
        self._requests: list[RequestRecord] = []
        self._by_v1_key = {u.v1_key: u for u in config.users}
        self._by_v2_key = {u.v2_key: u for u in config.users}
        self._people: dict[str, Person] = {
            u.username: Person(username=u.username, name=u.name, email=u.email)
            for u in config.users
        }
        self._people |= {
            t.username: Person(username=t.username, name=t.name or t.username, email="")
            for t in config.teams
        }
        self._members = {t.username: frozenset(t.members) for t in config.teams}

    # --- clock -------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def timestamp(self, moment: float) -> str:
        """Wall-clock text for a monotonic time, anchored once so it never jumps backwards."""
        base_mono, base_wall = self._epoch
        return rfc3339(base_wall + timedelta(seconds=moment - base_mono))

    @property
    def started_at(self) -> str:
        """When the emulator came up: creation time of every seeded project and job."""
        return rfc3339(self._epoch[1])

    # --- seed data ---------------------------------------------------------------------------

    def user_by_v1_key(self, key: str) -> UserConfig | None:
        return self._by_v1_key.get(key)

    def user_by_v2_key(self, key: str) -> UserConfig | None:
        return self._by_v2_key.get(key)

    def person(self, username: str) -> Person:
        return self._people[username]

    def project_creator(self, project: ProjectConfig) -> Person:
        """The owner, or for a team project its first member (the team itself if it has none)."""
        members = sorted(self._members.get(project.owner, ()))
        return self._people[members[0] if members else project.owner]

    def project_by_path(self, owner: str, name: str) -> ProjectConfig | None:
        return next((p for p in self.config.projects if p.owner == owner and p.name == name), None)

    def project_by_id(self, project_id: str) -> ProjectConfig | None:
        return next((p for p in self.config.projects if p.id == project_id), None)

    def owner_exists(self, username: str) -> bool:
        return username in self._people

    def can_access(self, user: UserConfig, project: ProjectConfig) -> bool:
        return (
            project.owner == user.username
            or user.username in self._members.get(project.owner, ())
            or user.username in project.collaborators
        )

    def visible_projects(self, user: UserConfig) -> list[ProjectConfig]:
        return [p for p in self.config.projects if self.can_access(user, p)]

    @staticmethod
    def job(project: ProjectConfig, job_id: str) -> JobConfig | None:
        return next((j for j in project.jobs if j.id == job_id), None)

    # --- runs --------------------------------------------------------------------------------

    def create_run(
        self,
        api: Literal["v1", "v2"],
        creator: UserConfig,
        project: ProjectConfig,
        job: JobConfig,
        environment: dict[str, str],
        arguments: str,
    ) -> Run:
        with self._lock:
            rules, default = self._outcomes.get((project.id, job.id), (job.outcomes, job.outcome))
            outcome, running_seconds = planned_end(job, environment, rules, default)
            run_id = _new_id(self._runs)
            run = Run(
                id=run_id,
                api=api,
                creator=creator,
                project=project,
                job=job,
                environment=environment,
                arguments=arguments,
                created=self.now(),
                time_scale=self.config.time_scale,
                outcome=outcome,
                running_seconds=running_seconds,
            )
            self._runs[run_id] = run
            return run

    def set_outcomes(
        self,
        job_id: str,
        rules: Sequence[OutcomeRule],
        outcome: Outcome | None = None,
        project_id: str | None = None,
    ) -> None:
        """Replace a job's outcome rules (and default ``outcome``) for runs created from now on.

        The job is found by id, in ``project_id`` if given; an unknown or ambiguous id is a
        :class:`ValueError` rather than a silent no-op, so a test cannot "fix" the wrong job.
        """
        matches = [
            (p, j)
            for p in self.config.projects
            if project_id is None or p.id == project_id
            for j in p.jobs
            if j.id == job_id
        ]
        where = f" in project {project_id!r}" if project_id is not None else ""
        if not matches:
            raise ValueError(f"no job {job_id!r}{where}")
        if len(matches) > 1:
            projects = ", ".join(p.id for p, _ in matches)
            raise ValueError(f"job {job_id!r} is in several projects ({projects}): pass project_id")
        if outcome is not None and outcome not in get_args(Outcome):
            raise ValueError(f"outcome must be one of {', '.join(get_args(Outcome))}")
        checked = tuple(OutcomeRule.model_validate(rule) for rule in rules)
        project, job = matches[0]
        with self._lock:
            self._outcomes[(project.id, job.id)] = (
                checked,
                job.outcome if outcome is None else outcome,
            )

    def runs_of(self, project: ProjectConfig, job: JobConfig) -> list[Run]:
        """The job's runs, oldest first."""
        with self._lock:
            return [r for r in self._runs.values() if r.project is project and r.job is job]

    def get_run(self, project: ProjectConfig, job: JobConfig, run_id: str) -> Run | None:
        with self._lock:
            run = self._runs.get(run_id)
        return run if run is not None and run.project is project and run.job is job else None

    def stop_run(self, run: Run) -> None:
        with self._lock:
            run.request_stop(self.now())

    def run_records(self) -> list[RunRecord]:
        with self._lock:
            runs = list(self._runs.values())
            now = self.now()  # read after the copy: no run in it is newer than `now`
        return [
            RunRecord(
                id=r.id,
                api=r.api,
                username=r.creator.username,
                project=r.project.name,
                project_id=r.project.id,
                job_id=r.job.id,
                environment=dict(r.environment),
                arguments=r.arguments,
                status=r.status(now).value,
                created_at=self.timestamp(r.created),
                stop_requested=r.stop_requested_at is not None,
            )
            for r in runs
        ]

    # --- request log -------------------------------------------------------------------------

    def log_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def request_records(self) -> list[RequestRecord]:
        with self._lock:
            return [RequestRecord(**r) for r in self._requests]


def _new_id(taken: dict[str, Run]) -> str:
    """A run id shaped like CML's engine ids: 16 lower-case letters and digits."""
    while True:
        candidate = "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
        if candidate not in taken:
            return candidate
