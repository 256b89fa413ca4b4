"""Prefect events for followed CML runs, so automations can react (e.g. notify on failure).

Names: `cml.run.started`, then one of `cml.run.succeeded`, `cml.run.failed` (FAILED and
TIMEDOUT; the `cml.run.status` label tells them apart), `cml.run.stopped`, `cml.run.skipped`.
The resource is the run (`cml.run.<run id>`); the job is a related resource (role `cml-job`).
Inside a task or flow run Prefect adds that run as related resources too.
"""

from __future__ import annotations

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


def emit_run_event(run: JobRun) -> None:
    """Emit the event for the run's current status (no secrets: ids, names, URLs only)."""
    from prefect.events import emit_event

    job = run.job
    emit_event(
        event=event_name(run),
        resource={
            "prefect.resource.id": f"cml.run.{run.id}",
            "prefect.resource.name": f"{job.slug} run {run.id}",
            "cml.run.status": run.status.short,
            "cml.run.url": run.page_url,
        },
        related=[
            {
                "prefect.resource.id": f"cml.job.{job.username}/{job.project}/{job.job_id}",
                "prefect.resource.role": "cml-job",
                "prefect.resource.name": job.slug,
                "cml.job.url": job.page_url,
            }
        ],
        payload={"environment": run.environment, "arguments": run.arguments},
    )
