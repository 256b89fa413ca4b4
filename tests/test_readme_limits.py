"""The README's command to resize a project's concurrency limit works on a real server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import PREFECT, PrefectServer

from cml_tasks.job import JobRef

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_resizing_the_project_limit_as_documented(prefect_server: PrefectServer) -> None:
    from prefect.client.orchestration import get_client

    from cml_tasks.prefect.project_limit import ensure_project_limit

    [command] = re.findall(r"`(prefect global-concurrency-limit update [^`]+ --limit \d+)`", README)
    job = JobRef.from_url("https://ml.example.com/alice/risk-analysis/jobs/208")
    with prefect_server.as_current_api():
        name = ensure_project_limit(job)
        assert name in command
        resized = subprocess.run(
            [PREFECT, *command.split()[1:]],
            env=prefect_server.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resized.returncode == 0, resized.stdout + resized.stderr
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 8
        assert ensure_project_limit(job) == name  # an existing limit keeps its size
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 8
