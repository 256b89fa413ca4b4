"""The job Overview page, so the URLs the Cloudera docs start from resolve in a browser."""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ._http import ApiError
from ._state import EmulatorState


def routes(state: EmulatorState) -> list[Route]:
    async def job_overview(request: Request) -> Response:
        owner = request.path_params["username"]
        project = state.project_by_path(owner, request.path_params["project_name"])
        job = state.job(project, request.path_params["job_id"]) if project else None
        if project is None or job is None:
            raise ApiError(404, "no such job")
        now = state.now()
        rows = "".join(
            f"<tr><td>{r.id}</td><td>{r.api}</td><td>{html.escape(r.creator.username)}</td>"
            f"<td>{state.timestamp(r.created)}</td><td>{r.status(now).value}</td></tr>"
            for r in reversed(state.runs_of(project, job))
        )
        title = html.escape(f"{job.name} - {owner}/{project.name}")
        return HTMLResponse(
            f"<!doctype html><title>{title}</title><h1>{title}</h1>"
            f"<p>Job {html.escape(job.id)}: <code>{html.escape(job.script)}</code></p>"
            "<table><tr><th>Run</th><th>API</th><th>By</th><th>Created</th><th>Status</th></tr>"
            f"{rows}</table>"
        )

    return [
        Route(
            "/{username}/{project_name}/jobs/{job_id}",
            job_overview,
            methods=["GET"],
            name="ui.job_overview",
        )
    ]
