"""`make test`'s processes take whole groups (`conftest.group_of`: a file, or a file's SQLite
or PostgreSQL half), so that a module's fixtures are set up once. Checked through
pytest-xdist as the Makefile runs it: pytest 9.2 silently broke xdist's own
`--dist loadgroup`, and every test became a group of its own."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import group_of

REPOSITORY = Path(__file__).resolve().parents[1]


def test_a_group_is_a_file_or_its_half_on_one_database() -> None:
    assert group_of("tests/test_windows.py::test_cli_year_of_months") == "test_windows.py"
    assert group_of("tests/test_backfill.py::test_decide[None-start]") == "test_backfill.py"
    halves = [
        group_of("tests/test_pipeline_cli.py::test_a_failed_step[sqlite]"),
        group_of("tests/test_pipeline_cli.py::test_a_failed_step[postgresql]"),
        group_of("tests/test_many_machines.py::test_killed[sqlite-3]"),
    ]
    assert halves == [
        "test_pipeline_cli.py[sqlite]",
        "test_pipeline_cli.py[postgresql]",
        "test_many_machines.py[sqlite]",
    ]


def make_test_options() -> list[str]:
    """The options `make test` gives pytest, from the Makefile (two processes here)."""
    makefile = (REPOSITORY / "Makefile").read_text()
    (line,) = re.findall(r"^\t\$\(BIN\)/pytest (-n \$\(WORKERS\) .*)$", makefile, flags=re.M)
    return shlex.split(line.replace("$(WORKERS)", "2"))


def test_make_test_s_processes_take_whole_files() -> None:
    files = ["tests/test_windows.py", "tests/test_inputs.py", "tests/test_pipeline_model.py"]
    options = [*make_test_options(), "-v", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options, *files],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, file in re.findall(r"\[(gw\d+)\].* PASSED (tests/\w+\.py)::", done.stdout):
        workers[file].add(worker)
    assert sorted(workers) == sorted(files), done.stdout[-3000:]
    assert all(len(ran_in) == 1 for ran_in in workers.values()), dict(workers)
