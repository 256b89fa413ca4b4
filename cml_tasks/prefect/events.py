"""Prefect events for CML runs and windows, so automations can react (e.g. notify on failure).

Runs: `cml.run.started` (every start, v1 or v2, and every adoption), then for followed runs
one of `cml.run.succeeded`, `cml.run.failed` (FAILED and TIMEDOUT; the `cml.run.status` label
tells them apart), `cml.run.stopped`, `cml.run.skipped`. The resource is the run
(`cml.run.<run id>`, named `risk-analysis/208 2017-01 run <id>`, with labels `cml.run.url`,
`cml.run.status` and, for a window, `cml.window`).

Windows whose start did not give a run: `cml.window.start-failed` (nothing started) and
`cml.window.outcome-unknown` (a run may exist), with the window as resource
(`cml.window.<user>/<project>/<job id>/<label>`, named `risk-analysis/208 2017-02: <reason>`)
and the reason as a label.

Each event's payload says it in full, as Prefect's own state events carry their state: the
window, the run's id, status and page URL, the job's and project's page URLs, how it started
(`started` or `adopted`) or the whole reason. Prefect's UI shows a card's resource by its name
(the default UI; the v1 UI shows its id) and links only Prefect's own resources (flow and task
runs), so the URLs are in the payload, one click away under "Raw".

A pipeline's step puts its name first in the resource's name (`train: risk-analysis/212
2017-03 run <id>`) and in the label `cml.step`.

Every event has the job (role `cml-job`, `cml.job.<user>/<project>/<job id>`) and the project
(role `cml-project`, `cml.project.<user>/<project>`) as related resources, so an automation
can match one job or one project. Inside a task or flow run Prefect adds that run too.
No secrets: ids, names, URLs, environments.
"""

from __future__ import annotations

from typing import Any

from cml_tasks._text import shortened
from cml_tasks.job import JobRef
from cml_tasks.models import JobRun
from cml_tasks.run_status import RunStatus

_TERMINAL_EVENTS = {
    RunStatus.SUCCEEDED: "cml.run.succeeded",
    RunStatus.FAILED: "cml.run.failed",
    RunStatus.TIMEDOUT: "cml.run.failed",
    RunStatus.STOPPED: "cml.run.stopped",
    RunStatus.SKIPPED: "cml.run.skipped",
}


def event_name(run: JobRun) -> str:
    """`cml.run.started` until the run is terminal, then its outcome's event."""
    return _TERMINAL_EVENTS.get(run.status, "cml.run.started")


def related(job: JobRef) -> list[dict[str, str]]:
    """The job and its project, as related resources of an event."""
    return [
        {
            "prefect.resource.id": f"cml.job.{job.username}/{job.project}/{job.job_id}",
            "prefect.resource.role": "cml-job",
            "prefect.resource.name": job.slug,
            "cml.job.url": job.page_url,
        },
        {
            "prefect.resource.id": f"cml.project.{job.username}/{job.project}",
            "prefect.resource.role": "cml-project",
            "prefect.resource.name": f"{job.username}/{job.project}",
        },
    ]


def emit_run_event(run: JobRun, window: str | None = None, step: str | None = None) -> None:
    """Emit the event for the run's current status."""
    label = f"{run.job.slug} {window}" if window else run.job.slug
    resource = {
        "prefect.resource.id": f"cml.run.{run.id}",
        "prefect.resource.name": f"{label} run {run.id}",
        "cml.run.status": run.status.short,
        "cml.run.url": run.page_url,
    }
    if window:
        resource["cml.window"] = window
    payload = _about(run.job, window) | {
        "run_id": run.id,
        "status": run.status.short,
        "run_url": run.page_url,
        "environment": run.environment,
    }
    _emit(event_name(run), resource, run.job, payload, step)


def emit_started(
    job: JobRef, window: str, run_id: str, run_url: str, how: str, step: str | None = None
) -> None:
    """`cml.run.started` for a window's run known only by its id (a v1 start, an adoption)."""
    resource = {
        "prefect.resource.id": f"cml.run.{run_id}",
        "prefect.resource.name": f"{job.slug} {window} run {run_id}",
        "cml.run.status": "started",
        "cml.run.url": run_url,
        "cml.window": window,
        "cml.start": how,
    }
    payload = _about(job, window) | {"run_id": run_id, "run_url": run_url, "start": how}
    _emit("cml.run.started", resource, job, payload, step)


def emit_window_failed(
    job: JobRef, window: str, *, unknown: bool, reason: str, step: str | None = None
) -> None:
    """`cml.window.start-failed` or `cml.window.outcome-unknown` for a window without a run."""
    resource = {
        "prefect.resource.id": f"cml.window.{job.username}/{job.project}/{job.job_id}/{window}",
        "prefect.resource.name": f"{job.slug} {window}: {shortened(reason, _NAMED_REASON)}",
        "cml.window": window,
        "cml.reason": reason,
    }
    name = "cml.window.outcome-unknown" if unknown else "cml.window.start-failed"
    _emit(name, resource, job, _about(job, window) | {"reason": reason}, step)


_NAMED_REASON = 120
"""The reason's length in a window event's name: the card shows it, the payload all of it."""


def _about(job: JobRef, window: str | None) -> dict[str, Any]:
    """What every event's payload says: the job, its project and (when there is one) the
    window."""
    about: dict[str, Any] = {
        "job": job.slug,
        "job_url": job.page_url,
        "project_url": job.project_url,
    }
    if window:
        about["window"] = window
    return about


def _emit(
    name: str,
    resource: dict[str, str],
    job: JobRef,
    payload: dict[str, Any],
    step: str | None = None,
) -> None:
    from prefect.events import emit_event

    if step:
        resource["prefect.resource.name"] = f"{step}: {resource['prefect.resource.name']}"
        resource["cml.step"] = step
    emit_event(event=name, resource=resource, related=related(job), payload=payload)
