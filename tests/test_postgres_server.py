"""A Prefect server on PostgreSQL, as deployments run it: what one machine writes through the
API, another machine (its own PREFECT_HOME, TMPDIR and working directory) reads back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from conftest import PrefectServer, machine_env

READ_VARIABLE = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

with get_client(sync_client=True) as client:
    variable = client.read_variable_by_name(sys.argv[1])
value = None if variable is None else variable.value
print(json.dumps({"api_url": PREFECT_API_URL.value(), "value": value}))
"""


async def _stored_value(postgres_url: str, name: str) -> Any:
    """The variable's value as the PostgreSQL database holds it (not through Prefect)."""
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        stored = await connection.fetchval("SELECT value FROM variable WHERE name = $1", name)
    finally:
        await connection.close()
    return None if stored is None else json.loads(stored)


def test_a_variable_written_here_is_read_on_another_machine(
    prefect_server_pg: PrefectServer, postgres_url: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    name = f"cml-pg-test-{uuid.uuid4().hex[:12]}"
    value = {"job": "alice/risk-analysis/208", "window": "2017-01", "status": "starting"}
    with prefect_server_pg.as_current_api(), get_client(sync_client=True) as client:
        created = client.create_variable(VariableCreate(name=name, value=value, tags=["cml"]))
    assert (created.name, created.value, created.tags) == (name, value, ["cml"])

    env = machine_env(prefect_server_pg, tmp_path, "machine-b")
    read = subprocess.run(
        [sys.executable, "-c", READ_VARIABLE, name],
        env=env,
        cwd=tmp_path / "machine-b" / "work",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stdout + read.stderr
    answer = json.loads(read.stdout.strip().splitlines()[-1])
    assert answer == {"api_url": prefect_server_pg.api_url, "value": value}
    assert asyncio.run(_stored_value(postgres_url, name)) == value  # on PostgreSQL, not SQLite
