"""The browser pages the project links to: a job's Overview page and a run's page.

- ``/<user>/<project>/jobs/<job id>``: the job's Overview page (the URL a job is named by, as
  in the Cloudera docs): its name, script and recent runs, each linking to its page.
- ``/<user>/<project>/jobs/<job id>/runs/<run id>``: a run's page (the project's convention for
  a run's URL, ``StartedRun.page_url``): id, status in words, created/finished times and the
  environment it was started with.

Both are plain GET pages without authentication, as a browser that is already logged in to
the workspace sees them (a real CML authenticates the browser by its session cookie, which the
emulator does not model); they show nothing a run's URL does not already name, and never a key.
An unknown user, project, job or run is a 404 HTML page. Every text from the seed data or a
request (names, ids, environment values) is escaped with ``html.escape``.
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ._config import JobConfig, ProjectConfig
from ._runs import Status
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

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b2733; }
header { color: #555; margin-bottom: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccd; padding: 0.3rem 0.7rem; text-align: left; }
th { background: #eef2f6; }
code { background: #f3f3f3; padding: 0 0.2rem; }
.status { font-weight: bold; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A whole HTML document; ``title`` is plain text (escaped here), ``body`` is HTML."""
    return HTMLResponse(
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><header>Cloudera Machine Learning (emulator)</header>\n{body}\n</body></html>\n",
        status_code=status,
    )


def _not_found(what: str) -> HTMLResponse:
    return _page("Not found", f"<h1>Not found</h1><p>{_e(what)}</p>", status=404)


def _job_path(owner: str, project: ProjectConfig, job: JobConfig) -> str:
    return f"/{owner}/{project.name}/jobs/{job.id}"


def routes(state: EmulatorState) -> list[Route]:
    def lookup(request: Request) -> tuple[str, ProjectConfig, JobConfig] | HTMLResponse:
        owner = request.path_params["username"]
        name = request.path_params["project_name"]
        project = state.project_by_path(owner, name)
        job = state.job(project, request.path_params["job_id"]) if project else None
        if project is None or job is None:
            return _not_found(f"No job {request.path_params['job_id']} in project {owner}/{name}.")
        return owner, project, job

    async def job_overview(request: Request) -> Response:
        found = lookup(request)
        if isinstance(found, HTMLResponse):
            return found
        owner, project, job = found
        now = state.now()
        runs = list(reversed(state.runs_of(project, job)))[:RECENT_RUNS]
        path = _job_path(owner, project, job)
        rows = "".join(
            f"<tr><td><a href='{_e(f'{path}/runs/{r.id}')}'>{_e(r.id)}</a></td>"
            f"<td class='status'>{_e(STATUS_WORDS[r.status(now)])}</td>"
            f"<td>{_e(state.timestamp(r.created))}</td><td>{_e(r.api)}</td>"
            f"<td>{_e(r.creator.username)}</td></tr>\n"
            for r in runs
        )
        table = (
            "<table id='runs'><tr><th>Run</th><th>Status</th><th>Created</th><th>API</th>"
            f"<th>By</th></tr>\n{rows}</table>"
            if runs
            else "<p>No runs yet.</p>"
        )
        return _page(
            f"{job.name} - {owner}/{project.name}",
            f"<h1>{_e(job.name)}</h1>\n"
            f"<p>Project <code>{_e(owner)}/{_e(project.name)}</code>, job <code>{_e(job.id)}"
            f"</code>, script <code>{_e(job.script)}</code></p>\n"
            f"<h2>Recent runs</h2>\n{table}",
        )

    async def run_page(request: Request) -> Response:
        found = lookup(request)
        if isinstance(found, HTMLResponse):
            return found
        owner, project, job = found
        run_id = request.path_params["run_id"]
        run = state.get_run(project, job, run_id)
        if run is None:
            return _not_found(f"No run {run_id} of job {job.id} in project {owner}/{project.name}.")
        now = state.now()
        finished = run.reached(now).get("finished_at")
        environment = "".join(
            f"<tr><td><code>{_e(k)}</code></td><td><code>{_e(v)}</code></td></tr>\n"
            for k, v in sorted(run.environment.items())
        )
        path = _job_path(owner, project, job)
        facts = [
            ("Run", f"<code>{_e(run.id)}</code>"),
            ("Status", f"<span class='status'>{_e(STATUS_WORDS[run.status(now)])}</span>"),
            ("Job", f"<a href='{_e(path)}'>{_e(job.name)}</a> (job {_e(job.id)})"),
            ("Script", f"<code>{_e(job.script)}</code>"),
            ("Created", _e(state.timestamp(run.created))),
            ("Finished", _e(state.timestamp(finished)) if finished is not None else "not yet"),
            ("Started by", f"{_e(run.creator.username)} (API {_e(run.api)})"),
        ]
        if run.arguments:
            facts.append(("Arguments", f"<code>{_e(run.arguments)}</code>"))
        rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>\n" for name, value in facts)
        return _page(
            f"Run {run.id} - {job.name} - {owner}/{project.name}",
            f"<h1>Run {_e(run.id)} of {_e(job.name)}</h1>\n<table id='run'>{rows}</table>\n"
            "<h2>Environment</h2>\n"
            + (
                f"<table id='environment'><tr><th>Name</th><th>Value</th></tr>\n{environment}"
                "</table>"
                if environment
                else "<p>No environment variables.</p>"
            ),
        )

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
