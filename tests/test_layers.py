"""The layers stay apart: only `cml_tasks.prefect` imports Prefect, nothing imports `flows/`,
and importing any other module of the library leaves Prefect unloaded (it costs seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cml_tasks"
PREFECT_IMPORT = re.compile(r"^\s*(from prefect[. ]|import prefect\b)", re.MULTILINE)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_prefect_subpackage_imports_prefect() -> None:
    outside = [
        path.relative_to(PACKAGE)
        for path in _modules()
        if PREFECT_IMPORT.search(path.read_text())
        and "prefect" not in path.relative_to(PACKAGE).parts
    ]
    assert outside == []


def test_the_library_never_imports_flows() -> None:
    assert [
        p for p in _modules() if re.search(r"^\s*(from|import) flows\b", p.read_text(), re.M)
    ] == []


def test_importing_the_rest_of_the_library_loads_no_prefect() -> None:
    names = [
        ".".join(("cml_tasks", *path.relative_to(PACKAGE).with_suffix("").parts))
        for path in _modules()
        if "prefect" not in path.relative_to(PACKAGE).parts
    ]
    names = [name.removesuffix(".__init__") for name in names]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
