"""The README's commands, run as written but for the host (the emulator's)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator

README = (Path(__file__).parent.parent / "README.md").read_text()
BIN = Path(sys.executable).parent


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def block_with(text: str) -> str:
    [block] = [b for b in shell_blocks() if text in b]
    return block


@pytest.fixture
def cml() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CML_")}
    environ["PATH"] = f"{BIN}:{environ['PATH']}"
    environ.update(env)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        cwd=BIN.parent.parent if (BIN.parent.parent / "README.md").exists() else None,
    )


def test_exactly_two_setup_commands() -> None:
    first = shell_blocks()[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_curl_example_against_the_emulator(cml: Emulator) -> None:
    script = block_with("curl").replace("http://127.0.0.1:8090", cml.url)
    result = bash(script)
    assert result.returncode == 0, result.stderr
    assert re.search(r'"engine_id":\s*"[a-z0-9]{16}"', result.stdout)
    assert [r["environment"] for r in cml.runs()] == [
        {"START_DATE": "2017-01-01", "END_DATE": "2017-01-31"}
    ]


def test_real_workspace_commands_against_the_emulator(cml: Emulator) -> None:
    block = block_with("CML_API_KEY=")
    script = (
        block.replace("https://ml-1234.example.cloudera.site", cml.url)
        .replace("CML_API_KEY=...", f"CML_API_KEY={DEFAULT_V1_KEY}")
        .replace(".venv/bin/cml-jobs", "cml-jobs")
    )
    result = bash(script)
    assert result.returncode == 0, result.stderr
    assert f"engine id {cml.runs()[0]['id']}" in result.stdout


def test_emulator_command_serves_the_documented_job() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = block_with("cml-jobs emulator").strip().replace(".venv/bin/", "")
    assert command == "cml-jobs emulator --port 8090"
    process = subprocess.Popen(
        [str(BIN / "cml-jobs"), "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/projects/alice/risk-analysis/jobs/208/start"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    url, auth=(DEFAULT_V1_KEY, ""), headers={"Content-Type": "application/json"}
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "emulator did not come up"
                time.sleep(0.1)
        assert response.status_code == 200
        assert re.fullmatch(r"[a-z0-9]{16}", response.json()["engine_id"])
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert f"http://127.0.0.1:{port}" in output


def test_every_public_name_is_documented() -> None:
    """The README is the public API: every name of both `__all__`s appears in it."""
    import cml_tasks
    import cml_tasks.prefect

    names = [*cml_tasks.__all__, *cml_tasks.prefect.__all__]
    assert [name for name in names if not re.search(rf"`{re.escape(name)}`", README)] == []
