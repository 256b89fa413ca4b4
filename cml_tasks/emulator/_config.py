"""Seed data: who exists, what they own, how each job's runs behave, and which faults to inject.

Loaded from a JSON or TOML file (chosen by suffix) or taken from :func:`default_config`, which
matches the Cloudera documentation's example (user ``alice``, project ``risk-analysis``,
job ``208``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._faults import Fault

DEFAULT_V1_KEY = "uysgxtj7jzkps96njextnxxmq05usp0b"
"""Alice's API v1 key: the one in Cloudera's Jobs API page."""

DEFAULT_V2_KEY = "22bbcb1c7647d093d5c0642ee8ab363b22d6c86de28187d1c4c03b2790095d16"
"""Alice's API v2 key (a demo key; real v2 keys differ from v1 keys too)."""

DEFAULT_PROJECT_ID = "lv1g-4hu5-a359-wagc"
"""API v2 id of alice's ``risk-analysis`` project."""

_SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ConfigError(ValueError):
    """The emulator config file cannot be read or is invalid; names the bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserConfig(_Model):
    """A user, with one key per API (CML keys cannot be changed and v1 and v2 keys differ)."""

    username: str = Field(pattern=_SLUG)
    name: str
    email: str
    v1_key: str = Field(min_length=1)
    v2_key: str = Field(min_length=1)


class TeamConfig(_Model):
    """A team: owns projects that all its members can use."""

    username: str = Field(pattern=_SLUG)
    name: str = ""
    members: tuple[str, ...] = ()


Outcome = Literal["succeeded", "failed", "timedout", "skipped"]
"""How a run ends if nobody stops it (API v2 ``ENGINE_<OUTCOME>``)."""


class OutcomeRule(_Model):
    """How a job's runs end when started with certain environment values: so one window of a
    pipeline (say ``START_DATE=2017-03-01``) can fail while the job's other runs succeed.

    ``when`` must ALL equal the run's own environment (the ``environment`` its start request
    sent, not the job's defaults). ``running_seconds``, if set, replaces the job's for such runs.
    """

    when: dict[str, str]
    outcome: Outcome
    running_seconds: float | None = Field(default=None, ge=0)

    @field_validator("when")
    @classmethod
    def _not_empty(cls, when: dict[str, str]) -> dict[str, str]:
        """An empty ``when`` would match every run: that is the job's own ``outcome``."""
        if not when:
            raise ValueError(
                'name at least one environment variable, e.g. {START_DATE = "2017-03-01"} '
                "(for every run, set the job's outcome instead)"
            )
        return when

    def matches(self, environment: Mapping[str, str]) -> bool:
        """Whether every ``when`` variable has exactly this value in ``environment``."""
        return all(environment.get(name) == value for name, value in self.when.items())


class JobConfig(_Model):
    """A job and how its runs behave: phase durations (seconds, before ``time_scale``) and outcome.

    A run ends TIMEDOUT after ``timeout_seconds`` of running if that is shorter than
    ``running_seconds``; a ``skipped`` run ends right after scheduling. ``outcomes`` picks
    another outcome (and optionally running time) per run environment: the first rule that
    matches wins, else ``outcome`` applies.
    """

    id: str = Field(pattern=_SLUG)
    name: str = Field(min_length=1)
    script: str = "main.py"
    kernel: str = "python3"
    cpu: float = Field(default=1.0, gt=0)
    memory: float = Field(default=2.0, gt=0)
    nvidia_gpu: int = Field(default=0, ge=0)
    runtime_identifier: str = (
        "docker.repository.cloudera.com/cloudera/cdsw/"
        "ml-runtime-workbench-python3.11-standard:2024.10.1-b12"
    )
    arguments: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    scheduling_seconds: float = Field(default=0.2, ge=0)
    starting_seconds: float = Field(default=0.2, ge=0)
    running_seconds: float = Field(default=1.0, ge=0)
    stopping_seconds: float = Field(default=0.2, ge=0)
    outcome: Outcome = "succeeded"
    outcomes: tuple[OutcomeRule, ...] = ()
    timeout_seconds: float | None = Field(default=None, gt=0)


class ProjectConfig(_Model):
    """A project: owned by a user or a team, addressed by name in v1 and by ``id`` in v2."""

    id: str = Field(min_length=1, pattern=r"^[^/:]+$")
    owner: str
    name: str = Field(pattern=_SLUG)
    description: str = ""
    collaborators: tuple[str, ...] = ()
    jobs: tuple[JobConfig, ...] = ()


class EmulatorConfig(_Model):
    """Everything the emulator serves. ``time_scale`` multiplies every job duration."""

    time_scale: float = Field(default=1.0, ge=0)
    users: tuple[UserConfig, ...] = Field(min_length=1)
    teams: tuple[TeamConfig, ...] = ()
    projects: tuple[ProjectConfig, ...] = ()
    faults: tuple[Fault, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> EmulatorConfig:
        """Cross-field checks, each naming the offending field."""
        _unique(
            "users", "username", [u.username for u in self.users] + [t.username for t in self.teams]
        )
        _unique("users", "v1_key", [u.v1_key for u in self.users])
        _unique("users", "v2_key", [u.v2_key for u in self.users])
        clash = {u.v1_key for u in self.users} & {u.v2_key for u in self.users}
        if clash:
            raise ValueError("users: a key cannot be both a v1_key and a v2_key")
        usernames = {u.username for u in self.users}
        owners = usernames | {t.username for t in self.teams}
        for i, team in enumerate(self.teams):
            for member in team.members:
                if member not in usernames:
                    raise ValueError(f"teams[{i}].members: unknown user {member!r}")
        _unique("projects", "id", [p.id for p in self.projects])
        _unique("projects", "owner/name", [f"{p.owner}/{p.name}" for p in self.projects])
        for i, project in enumerate(self.projects):
            if project.owner not in owners:
                raise ValueError(f"projects[{i}].owner: unknown user or team {project.owner!r}")
            for who in project.collaborators:
                if who not in usernames:
                    raise ValueError(f"projects[{i}].collaborators: unknown user {who!r}")
            _unique(f"projects[{i}].jobs", "id", [j.id for j in project.jobs])
        return self


def _unique(where: str, what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{where}: duplicate {what} {value!r}")
        seen.add(value)


def load_config(path: str | os.PathLike[str]) -> EmulatorConfig:
    """Read a ``.toml`` or ``.json`` config; a :class:`ConfigError` names any bad field."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read emulator config {file}: {exc}") from exc
    data: Any
    try:
        if file.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif file.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"emulator config {file}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"emulator config {file} is not valid {file.suffix[1:]}: {exc}") from exc
    try:
        return EmulatorConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_problem(e['loc'], e['msg'])}" for e in exc.errors())
        raise ConfigError(f"invalid emulator config {file}:\n{problems}") from exc


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    """``("projects", 0, "name")`` -> ``"projects[0].name: <msg>"``; cross-field checks name
    their field in the message itself."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def default_config(time_scale: float = 1.0) -> EmulatorConfig:
    """The built-in world: alice's ``risk-analysis`` jobs (one per outcome, then ``212`` and
    ``213`` for a two-step pipeline) and bob's project."""
    return EmulatorConfig(
        time_scale=time_scale,
        users=(
            UserConfig(
                username="alice",
                name="Alice Example",
                email="alice@example.com",
                v1_key=DEFAULT_V1_KEY,
                v2_key=DEFAULT_V2_KEY,
            ),
            UserConfig(
                username="bob",
                name="Bob Example",
                email="bob@example.com",
                v1_key="r7mdq3q3w0liot9jztyqno8j9zpd5xo8",
                v2_key="9a199fc330247e441f4f35d925f15b9f888127146f946aabada4573d420720ad",
            ),
        ),
        projects=(
            ProjectConfig(
                id=DEFAULT_PROJECT_ID,
                owner="alice",
                name="risk-analysis",
                description="Risk Analysis",
                jobs=(
                    JobConfig(id="208", name="Monthly risk report", script="report.py"),
                    JobConfig(
                        id="209", name="Data quality check", script="dq.py", outcome="failed"
                    ),
                    JobConfig(
                        id="210",
                        name="Stress test",
                        script="stress.py",
                        running_seconds=30.0,
                        timeout_seconds=1.0,
                    ),
                    JobConfig(
                        id="211",
                        name="Portfolio rebuild",
                        script="rebuild.py",
                        running_seconds=60.0,
                    ),
                    JobConfig(id="212", name="Train risk model", script="train.py"),
                    JobConfig(id="213", name="Score portfolios", script="score.py"),
                ),
            ),
            ProjectConfig(
                id="q8zt-3kd2-9vbe-x1pm",
                owner="bob",
                name="bob-sandbox",
                jobs=(JobConfig(id="301", name="Sandbox job"),),
            ),
        ),
    )
