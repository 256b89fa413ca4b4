"""Served by tests/test_cancel_e2e.py in a subprocess: a flow that follows one long CML run,
and the backfill flow (following its windows' runs)."""

from __future__ import annotations

from prefect import flow, serve

from cml_tasks.prefect.tasks import run_cml_job


@flow(name="follow-cml")
def follow_cml(job_url: str) -> None:
    # Submitted: the task runs in a worker thread, which SIGTERM never reaches.
    run_cml_job.submit(job_url, {"WINDOW": "cancel-me"}, poll_interval=0.5).result()


if __name__ == "__main__":
    from cml_tasks.prefect.backfill import cml_backfill

    serve(
        follow_cml.to_deployment(name="cancel-e2e"),
        cml_backfill.to_deployment(name="cancel-e2e"),
    )
