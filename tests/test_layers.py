"""The layers stay apart: only `cml_tasks.prefect` imports Prefect, nothing imports `flows/`,
and importing any other module of the library leaves Prefect unloaded (it costs seconds)."""

from __future__ import annotations

import ast
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


def _imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that `path` (module `name`) imports anywhere in it: at the top,
    inside functions, and for type checking alike."""
    imported: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                imported.add(full if full in modules else base)
    return (imported & modules) - {name}


def test_no_module_imports_another_that_imports_it_back() -> None:
    """No import cycle, directly or through others (type-checking imports count too)."""
    paths = {
        ".".join(("cml_tasks", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): path
        for path in _modules()
    }
    graph = {name: _imported_modules(path, name, set(paths)) for name, path in paths.items()}
    cycles: list[list[str]] = []
    for start in graph:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            module, trail = stack.pop()
            for target in graph[module]:
                if target == start:
                    cycles.append([*trail, start])
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
    assert cycles == []
    assert "cml_tasks.errors" in graph and graph["cml_tasks.errors"] == set()
