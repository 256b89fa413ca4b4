"""Run the scheduled window deployments from this process: for users without a work pool.

Serves the deployments of `deployments/prefect.yaml` (same names, schedules, parameters and
tags, minus the work pool), so both ways of running them share one definition:

    CML_JOB_URL=https://ml.example.com/alice/risk-analysis/jobs/208 CML_API_KEY=... \\
        python deployments/serve.py            # all of them, or name some: ... serve.py monthly

`{{ $VAR }}` placeholders in the parameters are read from the environment, as `prefect deploy`
does. Runs execute as subprocesses of this one, in the repository; stop it with Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.utilities.templating import apply_values

from cml_tasks.prefect.pipeline import cml_pipeline_run
from cml_tasks.prefect.window_run import cml_window_run

REPOSITORY = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPOSITORY / "deployments" / "prefect.yaml"
FLOWS: dict[str, Any] = {
    "cml_tasks.prefect.window_run:cml_window_run": cml_window_run,
    "cml_tasks.prefect.pipeline:cml_pipeline_run": cml_pipeline_run,
}
"""The flows this file serves, by their entrypoint in `prefect.yaml`."""


def served_deployments(
    names: list[str] | None = None, config: Path = PREFECT_YAML
) -> list[RunnerDeployment]:
    """The deployments of `config` (all, or those named) as served deployments."""
    specs: list[dict[str, Any]] = [
        spec
        for spec in yaml.safe_load(config.read_text())["deployments"]
        if spec["entrypoint"] in FLOWS
    ]
    unknown = sorted(set(names or []) - {spec["name"] for spec in specs})
    if unknown:
        known = ", ".join(spec["name"] for spec in specs)
        raise SystemExit(f"No deployment named {', '.join(unknown)} in {config} (it has {known})")
    deployments = []
    for spec in specs:
        if names and spec["name"] not in names:
            continue
        parameters = apply_values(
            spec.get("parameters") or {}, dict(os.environ), remove_notset=False
        )
        assert isinstance(parameters, dict)
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in spec.get("schedules") or []
        ]
        deployment = FLOWS[spec["entrypoint"]].to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=parameters,
            schedules=schedules,
            concurrency_limit=spec.get("concurrency_limit"),
        )
        assert isinstance(deployment, RunnerDeployment)
        deployments.append(deployment)
    return deployments


def main(argv: list[str]) -> None:
    """Serve until interrupted; run from anywhere (runs start in the repository)."""
    os.chdir(REPOSITORY)
    serve(*served_deployments(argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
