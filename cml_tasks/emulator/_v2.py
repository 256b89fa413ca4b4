"""API v2, the subset in ``cml-api-v2-jobs.swagger.json``: projects, jobs and job runs.

Bearer-key auth, opaque ids, grpc-gateway conventions: snake_case fields, ``runtimeError``
bodies, unset timestamps omitted, and ``:stop`` as a custom-method suffix on the run path.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._config import JobConfig, ProjectConfig, UserConfig
from ._environment import parse_environment
from ._http import ApiError, v2_json
from ._listing import Listing
from ._runs import Run, Status
from ._state import EmulatorState, Person


class _RunIdConvertor(Convertor[str]):
    """A run id never contains ':', so ``{run_id}:stop`` cannot swallow the custom method."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("cml_run_id", _RunIdConvertor())

_PEOPLE_KEYS = ("creator.email", "creator.name", "creator.username")
_PROJECTS = Listing(
    exact_keys={"creator.username", "owner.username"},
    substring_keys={
        "name",
        "description",
        "creator.email",
        "creator.name",
        "owner.email",
        "owner.name",
    },
    sort_keys={
        "created_at",
        "updated_at",
        "name",
        "description",
        *_PEOPLE_KEYS,
        "owner.email",
        "owner.name",
        "owner.username",
    },
)
_JOBS = Listing(
    exact_keys={"creator.username", "paused", "type"},
    substring_keys={"name", "description", "kernel", "script", "creator.email", "creator.name"},
    sort_keys={
        "created_at",
        "updated_at",
        "name",
        "description",
        "kernel",
        "paused",
        "script",
        "type",
        *_PEOPLE_KEYS,
    },
)
# The spec documents the job's own keys for runs too (description, kernel, name, paused,
# script, type; updated_at to sort): a run answers with its job's values for them.
_RUNS = Listing(
    exact_keys={"id", "status", "creator.username", "paused", "type"},
    substring_keys={"creator.email", "creator.name", "description", "kernel", "name", "script"},
    sort_keys={
        "created_at",
        "updated_at",
        "id",
        "status",
        "description",
        "kernel",
        "name",
        "paused",
        "script",
        "type",
        *_PEOPLE_KEYS,
    },
    choices={"status": {s.short for s in Status}},
)


def routes(state: EmulatorState) -> list[Route]:
    api = _Api(state)
    base = "/api/v2/projects"
    job = base + "/{project_id}/jobs/{job_id}"
    return [
        Route(base, api.list_projects, methods=["GET"], name="v2.list_projects"),
        Route(base + "/{project_id}", api.get_project, methods=["GET"], name="v2.get_project"),
        Route(base + "/{project_id}/jobs", api.list_jobs, methods=["GET"], name="v2.list_jobs"),
        Route(job, api.get_job, methods=["GET"], name="v2.get_job"),
        Route(job + "/runs", api.create_run, methods=["POST"], name="v2.create_run"),
        Route(job + "/runs", api.list_runs, methods=["GET"], name="v2.list_runs"),
        Route(job + "/runs/{run_id:cml_run_id}", api.get_run, methods=["GET"], name="v2.get_run"),
        Route(
            job + "/runs/{run_id:cml_run_id}:stop",
            api.stop_run,
            methods=["POST"],
            name="v2.stop_run",
        ),
    ]


class _Api:
    """The handlers, sharing lookups that answer 401/403/404 in one consistent order."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # --- handlers ----------------------------------------------------------------------------

    async def list_projects(self, request: Request) -> Response:
        user = self._user(request)
        items = [(p, self._project_index(p)) for p in self.state.visible_projects(user)]
        page, token = _PROJECTS.apply(items, request.query_params)
        projects = [self._project_json(p, user) for p in page]
        return v2_json({"projects": projects, "next_page_token": token})

    async def get_project(self, request: Request) -> Response:
        user, project = self._project(request)
        return v2_json(self._project_json(project, user))

    async def list_jobs(self, request: Request) -> Response:
        _, project = self._project(request)
        items = [(j, self._job_index(project, j)) for j in project.jobs]
        page, token = _JOBS.apply(items, request.query_params)
        jobs = [self._job_json(project, j) for j in page]
        return v2_json({"jobs": jobs, "next_page_token": token})

    async def get_job(self, request: Request) -> Response:
        _, project, job = self._job(request)
        return v2_json(self._job_json(project, job))

    async def create_run(self, request: Request) -> Response:
        user, project, job = self._job(request)
        payload = _body_object(await request.body())
        for name, expected in (("project_id", project.id), ("job_id", job.id)):
            given = payload.get(name)
            if given not in (None, "", expected):
                raise ApiError(
                    400, f"{name} {given!r} in the body does not match {expected!r} in the path"
                )
        environment = payload.get("environment")
        arguments = payload.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            raise ApiError(400, "arguments must be a string")
        run = self.state.create_run(
            "v2",
            user,
            project,
            job,
            {} if environment is None else parse_environment(environment),
            arguments or job.arguments,
        )
        return v2_json(self._run_json(run))

    async def list_runs(self, request: Request) -> Response:
        _, project, job = self._job(request)
        now = self.state.now()
        items = [(r, self._run_index(r, now)) for r in self.state.runs_of(project, job)]
        page, token = _RUNS.apply(items, request.query_params)
        runs = [self._run_json(r) for r in page]
        return v2_json({"job_runs": runs, "next_page_token": token})

    async def get_run(self, request: Request) -> Response:
        return v2_json(self._run_json(self._run(request)))

    async def stop_run(self, request: Request) -> Response:
        run = self._run(request)
        self.state.stop_run(run)
        return v2_json(self._run_json(run))

    # --- lookups -----------------------------------------------------------------------------

    def _user(self, request: Request) -> UserConfig:
        """``Authorization: Bearer <v2 key>``; a v1 key or Basic auth is unauthenticated."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        user = self.state.user_by_v2_key(key.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "missing or invalid API v2 key (Authorization: Bearer <key>)")
        return user

    def _project(self, request: Request) -> tuple[UserConfig, ProjectConfig]:
        user = self._user(request)
        project_id = request.path_params["project_id"]
        project = self.state.project_by_id(project_id)
        if project is None:
            raise ApiError(404, f"project {project_id!r} not found")
        if not self.state.can_access(user, project):
            raise ApiError(403, f"user {user.username!r} has no access to project {project_id!r}")
        return user, project

    def _job(self, request: Request) -> tuple[UserConfig, ProjectConfig, JobConfig]:
        user, project = self._project(request)
        job_id = request.path_params["job_id"]
        job = self.state.job(project, job_id)
        if job is None:
            raise ApiError(404, f"job {job_id!r} not found in project {project.id!r}")
        return user, project, job

    def _run(self, request: Request) -> Run:
        _, project, job = self._job(request)
        run_id = request.path_params["run_id"]
        run = self.state.get_run(project, job, run_id)
        if run is None:
            raise ApiError(404, f"job run {run_id!r} not found in job {job.id!r}")
        return run

    # --- JSON shapes -------------------------------------------------------------------------

    def _short_project(self, project: ProjectConfig) -> dict[str, str]:
        return {
            "public_identifier": project.id,
            "name": project.name,
            "default_project_engine": "ml_runtime",
            "slug": f"{project.owner}/{project.name}",
        }

    def _project_json(self, project: ProjectConfig, user: UserConfig) -> dict[str, Any]:
        admin = project.owner == user.username
        return {
            "id": project.id,
            "name": project.name,
            "owner": self.state.person(project.owner),
            "creator": self.state.project_creator(project),
            "description": project.description,
            "visibility": "private",
            "default_engine_type": "ml_runtime",
            "created_at": self.state.started_at,
            "updated_at": self.state.started_at,
            "creation_status": "success",
            "permissions": {
                "read": True,
                "write": True,
                "admin": admin,
                "business_user": False,
                "operator": True,
                "inherit": False,
            },
            "shared_memory_limit": 0,
            "environment": "{}",
            "slug": f"{project.owner}/{project.name}",
        }

    def _job_json(self, project: ProjectConfig, job: JobConfig) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "name": job.name,
            "script": job.script,
            "kernel": job.kernel,
            "cpu": job.cpu,
            "memory": job.memory,
            "nvidia_gpu": job.nvidia_gpu,
            "runtime_identifier": job.runtime_identifier,
            "runtime_addon_identifiers": [],
            "arguments": job.arguments,
            "environment": json.dumps(job.environment),
            "type": "manual",
            "schedule": "",
            "paused": False,
            "engine_image_id": "0",
            "creator": self.state.project_creator(project),
            "owner": self.state.person(project.owner),
            "project": self._short_project(project),
            "created_at": self.state.started_at,
            "updated_at": self.state.started_at,
            "kill_on_timeout": job.timeout_seconds is not None,
        }
        if job.timeout_seconds is not None:
            out["timeout"] = str(round(job.timeout_seconds))
        return out

    def _run_json(self, run: Run) -> dict[str, Any]:
        now = self.state.now()
        reached = run.reached(now)
        out: dict[str, Any] = {
            "id": run.id,
            "project_id": run.project.id,
            "job_id": run.job.id,
            "status": run.status(now).value,
            "created_at": self.state.timestamp(run.created),
        }
        for name in ("scheduling_at", "starting_at", "running_at", "finished_at"):
            if name in reached:
                out[name] = self.state.timestamp(reached[name])
        out |= {
            "kernel": run.job.kernel,
            "cpu": run.job.cpu,
            "memory": run.job.memory,
            "nvidia_gpu": run.job.nvidia_gpu,
            "arguments": run.arguments,
            "environment": json.dumps(run.environment),
            "creator": self.state.person(run.creator.username),
            "runtime_identifier": run.job.runtime_identifier,
        }
        return out

    # --- filter/sort indexes -----------------------------------------------------------------

    def _people(self, role: str, person: Person) -> dict[str, str]:
        return {
            f"{role}.username": person["username"],
            f"{role}.name": person["name"],
            f"{role}.email": person["email"],
        }

    def _project_index(self, project: ProjectConfig) -> dict[str, str]:
        return {
            "name": project.name,
            "description": project.description,
            "created_at": self.state.started_at,
            "updated_at": self.state.started_at,
            **self._people("owner", self.state.person(project.owner)),
            **self._people("creator", self.state.project_creator(project)),
        }

    def _job_index(self, project: ProjectConfig, job: JobConfig) -> dict[str, str]:
        return {
            "name": job.name,
            "description": "",
            "kernel": job.kernel,
            "script": job.script,
            "type": "manual",
            "paused": "false",
            "created_at": self.state.started_at,
            "updated_at": self.state.started_at,
            **self._people("creator", self.state.project_creator(project)),
        }

    def _run_index(self, run: Run, now: float) -> dict[str, str]:
        changed = max((t for t, _ in run.transitions() if t <= now), default=run.created)
        return {
            "id": run.id,
            "status": run.status(now).short,
            "created_at": self.state.timestamp(run.created),
            "updated_at": self.state.timestamp(changed),
            "description": "",
            "kernel": run.job.kernel,
            "name": run.job.name,
            "paused": "false",
            "script": run.job.script,
            "type": "manual",
            **self._people("creator", self.state.person(run.creator.username)),
        }


def _body_object(body: bytes) -> dict[str, Any]:
    """The request message: required (send at least ``{}``), a JSON object."""
    if not body.strip():
        raise ApiError(400, "request body is required: send at least {}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nested too deeply for the parser (``[[[[...``) - still a bad request.
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object")
    return payload
