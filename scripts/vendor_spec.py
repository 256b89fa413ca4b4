"""Vendor the structure of CML's API v2 spec into the tests, so a plain clone can test.

Reads `../shared/reference/cml-api-v2-jobs.swagger.json` (beside the clone) and writes
`tests/data/cml-api-v2-jobs.structure.json`: paths, parameters, schemas and status codes,
without prose (descriptions, summaries, titles, examples). The few facts the conformance
tests take from parameter descriptions (supported `search_filter` and `sort` keys, run
statuses) are kept as `x-search-filter-keys`, `x-status-values` and `x-sort-keys`.

    python scripts/vendor_spec.py [SPEC] [OUT]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "reference" / "cml-api-v2-jobs.swagger.json"
TARGET = ROOT / "tests" / "data" / "cml-api-v2-jobs.structure.json"

_PROSE = {"description", "summary", "title", "example", "examples", "externalDocs"}
# Objects whose keys are names (of properties, definitions, paths...), not keywords.
_NAME_MAPS = {"properties", "definitions", "paths", "responses", "securityDefinitions"}


def structure(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without prose, with the facts tests read from descriptions made explicit."""
    result: dict[str, Any] = _strip(spec)
    result["info"] = {"title": spec["info"]["title"], "version": spec["info"]["version"]}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for index, parameter in enumerate(operation.get("parameters", [])):
                facts = _facts(parameter)
                if facts:
                    result["paths"][path][method]["parameters"][index].update(facts)
    return result


def _strip(node: Any, names: bool = False) -> Any:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {key: _strip(value) for key, value in node.items()}
    return {
        key: _strip(value, names=key in _NAME_MAPS)
        for key, value in node.items()
        if key not in _PROSE
    }


def _facts(parameter: dict[str, Any]) -> dict[str, list[str]]:
    text = parameter.get("description") or ""
    if parameter.get("name") == "search_filter":
        keys = _bracketed(text, "Supported search filter keys are:")
        statuses = _bracketed(text, 'where "status" can be one of the following:')
        example = re.search(r"search_filter=(\{.*?\})", text)
        keys += [] if example is None else list(json.loads(example.group(1)))
        keys += ["status"] if statuses else []
        return {"x-search-filter-keys": sorted(set(keys)), "x-status-values": statuses}
    if parameter.get("name") == "sort":
        return {"x-sort-keys": _bracketed(text, "Supported sort keys are:")}
    return {}


def _bracketed(text: str, lead: str) -> list[str]:
    """`lead: [a b c]` in a parameter description -> `["a", "b", "c"]`."""
    found = re.search(re.escape(lead) + r"\s*\[([^\]]*)\]", text)
    return [word for word in re.split(r"[,\s]+", found.group(1)) if word] if found else []


def render(spec: dict[str, Any]) -> str:
    """The vendored file's exact text."""
    return json.dumps(structure(spec), indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else SOURCE
    target = Path(argv[1]) if len(argv) > 1 else TARGET
    target.write_text(render(json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {target} from {source}")


if __name__ == "__main__":
    main(sys.argv[1:])
