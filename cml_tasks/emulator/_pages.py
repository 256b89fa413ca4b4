"""The browser pages the project links to: a job's Overview page and a run's page.

- ``/<user>/<project>/jobs/<job id>``: the job's Overview page (the URL a job is named by, as
  in the Cloudera docs): its name, script and recent runs, each linking to its page.
- ``/<user>/<project>/jobs/<job id>/runs/<run id>``: a run's page (the project's convention for
  a run's URL, ``StartedRun.page_url``): id, status in words, created/finished times and the
  environment it was started with.

Both are plain GET pages without authentication, as a browser that is already logged in to
the workspace sees them (a real CML authenticates the browser by its session cookie, which the
emulator does not model); they show nothing a run's URL does not already name, and never a key.
An unknown user, project, job or run is a 404 HTML page. The pages are Jinja2 templates in
``templates/`` with autoescape on, so every text from the seed data or a request (names, ids,
environment values) is escaped by default, not by each call site remembering to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ._config import JobConfig, ProjectConfig
from ._runs import Run, Status
from ._state import EmulatorState

RECENT_RUNS = 50
"""How many runs a job's page lists, newest first."""

STATUS_WORDS = {
    Status.SCHEDULING: "Scheduling",
    Status.STARTING: "Starting",
    Status.RUNNING: "Running",
    Status.STOPPING: "Stopping",
    Status.STOPPED: "Stopped",
    Status.UNKNOWN: "Unknown",
    Status.SUCCEEDED: "Succeeded",
    Status.FAILED: "Failed",
    Status.TIMEDOUT: "Timed out",
    Status.SKIPPED: "Skipped",
}
"""A run's status as the page says it."""

TEMPLATES = Jinja2Templates(
    env=Environment(
        loader=PackageLoader("cml_tasks.emulator"),  # templates/ is package data, in the wheel
        autoescape=True,  # every template, whatever its name: escaping is not opt-in
        undefined=StrictUndefined,  # a misspelt name fails the page instead of showing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
)
"""The pages' templates; autoescape is on for every template, so escaping is the default."""


@dataclass(frozen=True)
class JobAt:
    """A job as the URL names it: the owner from the path, its project and the job."""

    owner: str
    project: ProjectConfig
    job: JobConfig

    @property
    def path(self) -> str:
        """The job's page, which its runs' pages are under."""
        return f"/{self.owner}/{self.project.name}/jobs/{self.job.id}"


class RunRow(NamedTuple):
    """One line of a job's recent runs, already in words and wall-clock time."""

    id: str
    status: str
    created: str
    api: str
    by: str


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """One template as a whole HTML page; the values in ``context`` are escaped by it."""
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def _not_found(request: Request, what: str) -> Response:
    """A 404 as an HTML page, since a browser, not an API client, asked."""
    return _render(request, "not_found.html", status_code=404, what=what)


def _find_job(state: EmulatorState, request: Request) -> JobAt | None:
    """The job the path names, or None if its user, project or job does not exist."""
    owner, name = request.path_params["username"], request.path_params["project_name"]
    project = state.project_by_path(owner, name)
    job = state.job(project, request.path_params["job_id"]) if project else None
    return JobAt(owner, project, job) if project and job else None


def _job_not_found(request: Request) -> Response:
    """Names what the path asked for, as no job was found to name."""
    params = request.path_params
    where = f"{params['username']}/{params['project_name']}"
    return _not_found(request, f"No job {params['job_id']} in project {where}.")


def _run_row(state: EmulatorState, run: Run, now: float) -> RunRow:
    """The run in words and wall-clock time: the template only lays text out."""
    status, created = STATUS_WORDS[run.status(now)], state.timestamp(run.created)
    return RunRow(run.id, status, created, run.api, run.creator.username)


def _job_overview(state: EmulatorState, request: Request) -> Response:
    """The job's name, script and its newest runs."""
    at = _find_job(state, request)
    if at is None:
        return _job_not_found(request)
    now = state.now()
    runs = list(reversed(state.runs_of(at.project, at.job)))[:RECENT_RUNS]
    return _render(request, "job.html", at=at, runs=[_run_row(state, r, now) for r in runs])


def _run_page(state: EmulatorState, request: Request) -> Response:
    """One run of the job: status, times and the environment it was started with."""
    at = _find_job(state, request)
    if at is None:
        return _job_not_found(request)
    run_id = request.path_params["run_id"]
    run = state.get_run(at.project, at.job, run_id)
    if run is None:
        where = f"{at.owner}/{at.project.name}"
        return _not_found(request, f"No run {run_id} of job {at.job.id} in project {where}.")
    now = state.now()
    finished = run.reached(now).get("finished_at")
    return _render(
        request,
        "run.html",
        at=at,
        run=run,
        status=STATUS_WORDS[run.status(now)],
        created=state.timestamp(run.created),
        finished=state.timestamp(finished) if finished is not None else None,
    )


def routes(state: EmulatorState) -> list[Route]:
    """The two pages over ``state``; GET only, like a browser's."""

    async def job_overview(request: Request) -> Response:
        return _job_overview(state, request)

    async def run_page(request: Request) -> Response:
        return _run_page(state, request)

    return [
        Route(
            "/{username}/{project_name}/jobs/{job_id}",
            job_overview,
            methods=["GET"],
            name="ui.job_overview",
        ),
        Route(
            "/{username}/{project_name}/jobs/{job_id}/runs/{run_id}",
            run_page,
            methods=["GET"],
            name="ui.run_page",
        ),
    ]
