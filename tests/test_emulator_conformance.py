"""The emulator's API v2 against Cloudera's own Swagger spec, with schemathesis.

The spec is read from ``<clone>/../shared/reference/`` (where CI puts ``shared/`` beside the
clone); a missing spec FAILS these tests rather than skipping them.

For each operation the emulator implements, schemathesis generates requests and checks the
answers: status code, content type and body conform to the spec (the body also without
undocumented fields, int32 values in range and int64 strings that are integers), and no 5xx.
Flavours per operation:

- ``documented``: known ids, and only what the spec documents as supported (``search_filter``
  and ``sort`` keys from the parameter descriptions, a run body whose ids agree with the path):
  must be 200.
- ``fuzzed``: known ids, anything the spec's types allow: any status, still conformant.
- ``unknown_ids``: generated ids: a 4xx ``runtimeError``.
- ``unauthenticated``: no ``Authorization``: 401.

Operations the emulator leaves out answer a 4xx ``runtimeError`` (the spec's ``default``).
UpdateJob is not tested: schemathesis cannot build its ``{job.id}`` path.

Bounded and deterministic: a few dozen derandomized examples per operation, ~10 s in all.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cml_tasks.emulator import DEFAULT_PROJECT_ID, DEFAULT_V2_KEY, Emulator

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SPEC_PATH = REFERENCE / "cml-api-v2-jobs.swagger.json"
AUTH = {"Authorization": f"Bearer {DEFAULT_V2_KEY}"}
JOB_ID = "208"

IMPLEMENTED = (
    "ListProjects",
    "GetProject",
    "ListJobs",
    "GetJob",
    "CreateJobRun",
    "ListJobRuns",
    "GetJobRun",
    "StopJobRun",
)
UNIMPLEMENTED = ("ListAllJobs", "CreateProject", "DeleteProject", "CreateJob", "DeleteJob")

EXAMPLES = {"documented": 25, "fuzzed": 40, "unknown_ids": 10, "unauthenticated": 3}
EXAMPLES_UNIMPLEMENTED = 5


# --- the spec --------------------------------------------------------------------------------


@functools.cache
def _load_spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        pytest.fail(
            f"reference spec not found: {SPEC_PATH} (expected shared/reference/ beside the "
            "clone, i.e. <clone>/../shared/reference/)",
            pytrace=False,
        )
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


@functools.cache
def _schema() -> Any:
    return schemathesis.openapi.from_dict(json.loads(json.dumps(_load_spec())))


def _definition(operation_id: str) -> dict[str, Any]:
    """The spec's own text of one operation."""
    for item in _load_spec()["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                return operation
    pytest.fail(f"operation {operation_id} is not in {SPEC_PATH}", pytrace=False)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        schema = _load_spec()["definitions"][name]
    return schema


def _bracketed(text: str, lead: str) -> list[str]:
    """``lead: [a b c]`` in a parameter description -> ``["a", "b", "c"]``."""
    found = re.search(re.escape(lead) + r"\s*\[([^\]]*)\]", text)
    return [word for word in re.split(r"[,\s]+", found.group(1)) if word] if found else []


# --- the emulator ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def known_ids(emulator: Emulator) -> dict[str, str]:
    """Path parameters that exist: the seeded project, job 208 and a run started here."""
    response = httpx.post(
        f"{emulator.url}/api/v2/projects/{DEFAULT_PROJECT_ID}/jobs/{JOB_ID}/runs",
        headers=AUTH,
        json={},
    )
    response.raise_for_status()
    return {"project_id": DEFAULT_PROJECT_ID, "job_id": JOB_ID, "run_id": response.json()["id"]}


# --- checks ----------------------------------------------------------------------------------


def _wire_errors(value: Any, schema: dict[str, Any], where: str) -> Iterator[str]:
    """What JSON Schema leaves unchecked: fields the spec does not list, int32 range, int64
    strings (proto3 JSON renders int64 as a string) and base64 bytes."""
    schema = _resolve(schema)
    kind, fmt = schema.get("type"), schema.get("format")
    if isinstance(value, dict) and (kind == "object" or "properties" in schema):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                yield from _wire_errors(item, properties[name], f"{where}.{name}")
            elif isinstance(extra, dict):
                yield from _wire_errors(item, extra, f"{where}.{name}")
            else:
                yield f"{where}.{name}: not a field of the spec's schema"
    elif isinstance(value, list) and kind == "array":
        for index, item in enumerate(value):
            yield from _wire_errors(item, schema.get("items", {}), f"{where}[{index}]")
    elif kind == "integer" and fmt == "int32" and isinstance(value, int):
        if not -(2**31) <= value < 2**31:
            yield f"{where}: {value} is out of int32 range"
    elif kind == "string" and fmt == "int64" and isinstance(value, str):
        if not re.fullmatch(r"-?\d+", value) or not -(2**63) <= int(value) < 2**63:
            yield f"{where}: {value!r} is not an int64 string"
    elif kind == "string" and fmt == "byte" and isinstance(value, str):
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            yield f"{where}: {value!r} is not base64"


def documented_fields_only(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: the body has nothing beyond the spec's schema for its status."""
    responses = case.operation.definition.raw["responses"]
    declared = responses.get(str(response.status_code)) or responses["default"]
    try:
        body = response.json()
    except ValueError:
        return  # not JSON: content_type_conformance and response_schema_conformance say so
    errors = list(_wire_errors(body, declared["schema"], "$"))
    assert not errors, "\n".join(errors)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    documented_fields_only,
]


# --- strategies ------------------------------------------------------------------------------


def _query_parameters(operation_id: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _definition(operation_id)["parameters"] if p["in"] == "query"}


def _filter_value(key: str, statuses: list[str]) -> st.SearchStrategy[Any]:
    if key == "status":
        return st.sampled_from(statuses)
    if key == "paused":
        return st.booleans() | st.sampled_from(["true", "false"])
    return st.text(max_size=12)


def _documented_query(operation_id: str) -> st.SearchStrategy[dict[str, Any]]:
    """Only what the parameter descriptions document; ``None`` leaves a parameter out."""
    parameters = _query_parameters(operation_id)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    if "search_filter" in parameters:
        text = parameters["search_filter"]["description"]
        keys = _bracketed(text, "Supported search filter keys are:")
        statuses = _bracketed(text, 'where "status" can be one of the following:')
        example = re.search(r"search_filter=(\{.*?\})", text)
        keys += [] if example is None else list(json.loads(example.group(1)))
        keys += ["status"] if statuses else []
        assert keys, f"{operation_id}: no search_filter keys documented"
        filters = st.sets(st.sampled_from(sorted(set(keys))), max_size=3).flatmap(
            lambda chosen: st.fixed_dictionaries(
                {key: _filter_value(key, statuses) for key in sorted(chosen)}
            )
        )
        parts["search_filter"] = st.none() | filters.map(json.dumps)
    if "sort" in parameters:
        keys = _bracketed(parameters["sort"]["description"], "Supported sort keys are:")
        assert keys, f"{operation_id}: no sort keys documented"
        term = st.tuples(st.sampled_from(["", "+", "-"]), st.sampled_from(keys))
        order = st.lists(term, min_size=1, max_size=3, unique_by=lambda t: t[1])
        parts["sort"] = st.none() | order.map(lambda terms: ",".join(s + k for s, k in terms))
    if "page_size" in parameters:
        parts["page_size"] = st.none() | st.integers(min_value=0, max_value=25)
    if "page_token" in parameters:
        parts["page_token"] = st.sampled_from([None, ""])
    return st.fixed_dictionaries(parts)


_ENV_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)


def _documented_run_body(ids: dict[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    """A ``CreateJobRunRequest`` whose ids, when given, are the ones in the path."""
    return st.fixed_dictionaries(
        {},
        optional={
            "project_id": st.sampled_from(["", ids["project_id"]]),
            "job_id": st.sampled_from(["", ids["job_id"]]),
            "environment": st.dictionaries(_ENV_NAMES, st.text(max_size=20), max_size=3),
            "arguments": st.text(max_size=30),
        },
    )


def _documented(case: Any, query: dict[str, Any], body: dict[str, Any] | None) -> Any:
    if query:
        merged = {**(case.query or {}), **query}
        case.query = {name: value for name, value in merged.items() if value is not None}
    if body is not None:
        case.body = body
    return case


# --- running ---------------------------------------------------------------------------------


def _run(
    operation_id: str,
    strategy: st.SearchStrategy[Any],
    base_url: str,
    headers: dict[str, str],
    examples: int,
    expect: range,
) -> None:
    seen: list[int] = []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        try:
            response = case.call_and_validate(
                base_url=base_url, headers=headers, checks=CHECKS, timeout=10
            )
        except FailureGroup as exc:  # not an Exception: hypothesis would not report it
            raise AssertionError(str(exc)) from None
        assert response.status_code in expect, (
            f"{operation_id}: status {response.status_code}, expected "
            f"{expect.start}..{expect.stop - 1}: {response.text[:500]}"
        )
        seen.append(response.status_code)

    check()
    assert seen, f"{operation_id}: no request was made"


OK = range(200, 201)
CLIENT_ERROR = range(400, 500)
ANY = range(100, 600)
FLAVOURS = ("documented", "fuzzed", "unknown_ids", "unauthenticated")


def _cases() -> Iterator[Any]:
    for operation_id in IMPLEMENTED:
        for flavour in FLAVOURS:
            if flavour == "unknown_ids" and operation_id == "ListProjects":
                continue  # no ids in its path
            yield pytest.param(operation_id, flavour, id=f"{operation_id}-{flavour}")


@pytest.mark.parametrize(("operation_id", "flavour"), list(_cases()))
def test_implemented_operation_conforms(
    emulator: Emulator, known_ids: dict[str, str], operation_id: str, flavour: str
) -> None:
    operation = _schema().find_operation_by_id(operation_id)
    ids = {p.name: known_ids[p.name] for p in operation.path_parameters}
    headers, expect = AUTH, ANY
    if flavour == "documented":
        body = _documented_run_body(known_ids) if operation_id == "CreateJobRun" else st.none()
        strategy = st.tuples(
            operation.as_strategy(path_parameters=ids),
            _documented_query(operation_id),
            body,
        ).map(lambda drawn: _documented(*drawn))
        expect = OK
    elif flavour == "fuzzed":
        strategy = operation.as_strategy(path_parameters=ids)
    elif flavour == "unknown_ids":
        strategy = operation.as_strategy()
        expect = CLIENT_ERROR
    else:
        strategy = operation.as_strategy(path_parameters=ids)
        headers, expect = {}, range(401, 402)
    _run(operation_id, strategy, emulator.url, headers, EXAMPLES[flavour], expect)


@pytest.mark.parametrize("operation_id", UNIMPLEMENTED)
def test_unimplemented_operation_answers_runtime_error(
    emulator: Emulator, known_ids: dict[str, str], operation_id: str
) -> None:
    operation = _schema().find_operation_by_id(operation_id)
    ids = {p.name: known_ids[p.name] for p in operation.path_parameters}
    strategy = operation.as_strategy(path_parameters=ids)
    _run(operation_id, strategy, emulator.url, AUTH, EXAMPLES_UNIMPLEMENTED, CLIENT_ERROR)


def test_reference_spec_is_where_ci_puts_it() -> None:
    """``shared/`` beside the clone: ``<clone>/../shared/reference/``."""
    spec = _load_spec()
    assert spec["swagger"] == "2.0"
    for operation_id in (*IMPLEMENTED, *UNIMPLEMENTED):
        assert _definition(operation_id)["responses"]["default"]


def test_too_deeply_nested_json_is_a_runtime_error_not_a_5xx(
    emulator: Emulator, known_ids: dict[str, str]
) -> None:
    """Found while writing these tests (generators never nest this deep): JSON nested past
    the parser's recursion limit was a 500; it is a 400 like any other malformed JSON."""
    runs = _schema().find_operation_by_id("ListJobRuns")
    path = {name: known_ids[name] for name in ("project_id", "job_id")}
    deep = "[" * 3000
    with httpx.Client(base_url=emulator.url, headers=AUTH) as client:
        listed = client.get(
            runs.path.format(**path), params={"search_filter": deep, "sort": "-created_at"}
        )
        created = client.post(
            runs.path.format(**path),
            content=deep.encode(),
            headers={"Content-Type": "application/json"},
        )
    for operation_id, response in (("ListJobRuns", listed), ("CreateJobRun", created)):
        case = _schema().find_operation_by_id(operation_id).Case(path_parameters=path)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            raise AssertionError(str(exc)) from None
        assert response.status_code == 400, response.text
