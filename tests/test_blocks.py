"""The CML Credentials block as the Prefect UI shows it: field titles with units, descriptions,
logo and docs link; saved and read back; keys stay masked."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from cml_tasks.emulator import DEFAULT_V1_KEY, DEFAULT_V2_KEY
from cml_tasks.prefect.blocks import CMLCredentials

TITLES = {
    "host": "Workspace URL",
    "api_key": "API v1 key",
    "api_v2_key": "API v2 key",
    "verify_tls": "Verify TLS certificate",
    "ca_bundle": "CA bundle (PEM path)",
    "connect_timeout": "Connect timeout (seconds)",
    "timeout": "Timeout (seconds)",
    "allow_insecure_http": "Allow plain HTTP",
}


def test_every_field_has_a_title_and_a_description() -> None:
    properties = CMLCredentials.model_json_schema()["properties"]
    assert {name: p["title"] for name, p in properties.items()} == TITLES
    for name, schema in properties.items():
        assert len(schema.get("description", "")) > 20, name
    assert "Seconds" in properties["connect_timeout"]["description"]
    assert "Seconds" in properties["timeout"]["description"]


def test_block_schema_sent_to_the_server_has_the_titles_and_secret_fields() -> None:
    schema = CMLCredentials._to_block_schema(block_type_id=None).fields
    assert {name: p["title"] for name, p in schema["properties"].items()} == TITLES
    assert set(schema["secret_fields"]) == {"api_key", "api_v2_key"}
    assert schema["title"] == "CMLCredentials"  # the key a saved block is referred by
    for key in ("api_key", "api_v2_key"):
        assert_masked(schema, key)


MASKED = {"type": "string", "format": "password", "writeOnly": True}


def assert_masked(schema: dict[str, Any], key: str) -> None:
    """The UI's password input: a plain string property of format `password` (the UI renders
    an `anyOf` with null as a choice of kinds, or a textarea), optional without a null
    default (which the string schema would refuse)."""
    prop = schema["properties"][key]
    assert {name: prop.get(name) for name in MASKED} == MASKED, prop
    assert "anyOf" not in prop and "default" not in prop, prop
    assert key not in schema.get("required", []), schema.get("required")


def test_keys_are_masked_inputs_in_every_schema_the_ui_reads() -> None:
    """The block's own schema (create and edit forms) and the flows' parameter schema (a
    block filled in the run form)."""
    from prefect.utilities.callables import parameter_schema

    from cml_tasks.prefect.backfill import cml_backfill

    for key in ("api_key", "api_v2_key"):
        assert_masked(CMLCredentials.model_json_schema(), key)
        definitions = parameter_schema(cml_backfill.fn).model_dump()["definitions"]
        assert_masked(definitions["CMLCredentials"], key)


def test_block_type_has_a_logo_a_docs_link_and_a_code_example() -> None:
    block_type = CMLCredentials._to_block_type()
    assert block_type.name == "CML Credentials"
    assert str(block_type.logo_url).startswith("https://")
    assert str(block_type.logo_url).endswith(".svg")
    assert str(block_type.documentation_url).startswith("https://docs.cloudera.com/")
    assert block_type.description and "Cloudera Machine Learning" in block_type.description
    # A fenced block: the UI's Example box renders markdown and shows nothing otherwise.
    assert block_type.code_example and block_type.code_example.strip().startswith("```python\n")
    assert 'CMLCredentials.load("BLOCK_NAME")' in block_type.code_example


@pytest.mark.usefixtures("prefect_api")
def test_saved_block_reads_back_and_keys_stay_masked() -> None:
    from prefect.settings import PREFECT_API_URL

    saved = CMLCredentials(
        host="https://ml.example.com",
        api_key=DEFAULT_V1_KEY,
        api_v2_key=DEFAULT_V2_KEY,
        verify_tls=False,
        connect_timeout=3.5,
        timeout=12,
        allow_insecure_http=True,
    )
    document_id = saved.save("blocks-test", overwrite=True)

    loaded = CMLCredentials.load("blocks-test")
    assert isinstance(loaded, CMLCredentials)
    assert loaded.host == "https://ml.example.com"
    assert loaded.api_key and loaded.api_key.get_secret_value() == DEFAULT_V1_KEY
    assert loaded.api_v2_key and loaded.api_v2_key.get_secret_value() == DEFAULT_V2_KEY
    assert (loaded.verify_tls, loaded.connect_timeout, loaded.timeout) == (False, 3.5, 12.0)
    assert loaded.allow_insecure_http is True
    assert DEFAULT_V1_KEY not in repr(loaded) and DEFAULT_V2_KEY not in str(loaded)
    settings = loaded.settings()
    assert settings.api_key and settings.api_key.get_secret_value() == DEFAULT_V1_KEY

    # What the UI reads: the document without its secrets, the keys masked.
    api = str(PREFECT_API_URL.value())
    document = httpx.get(f"{api}/block_documents/{document_id}", timeout=30).json()
    assert document["data"]["api_key"] != DEFAULT_V1_KEY
    assert set(document["data"]["api_key"]) == {"*"}
    assert set(document["data"]["api_v2_key"]) == {"*"}
    assert document["data"]["host"] == "https://ml.example.com"
    assert DEFAULT_V1_KEY not in httpx.get(f"{api}/block_documents/{document_id}").text


def test_timeouts_are_bounded_as_the_settings_are() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CMLCredentials(timeout=0)
    with pytest.raises(ValidationError):
        CMLCredentials(connect_timeout=10_000)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("keys", "name"),
    [({"api_key": DEFAULT_V1_KEY}, "blocks-test-v1-only"), ({}, "blocks-test-no-key")],
    ids=["v1-key-only", "no-key"],
)
def test_block_without_a_key_saves_reads_back_and_its_edit_form_validates(
    keys: dict[str, str], name: str
) -> None:
    """A key left empty is not stored, and reads back as None; the document the edit form
    starts from, and a form that sets the missing key, pass the server's validation of the
    block's schema (what the UI asks before saving)."""
    from prefect.settings import PREFECT_API_URL

    document_id = CMLCredentials(host="https://ml.example.com", **keys).save(name, overwrite=True)
    loaded = CMLCredentials.load(name)
    assert isinstance(loaded, CMLCredentials)
    assert loaded.api_v2_key is None
    if keys:
        assert loaded.api_key and loaded.api_key.get_secret_value() == DEFAULT_V1_KEY
    else:
        assert loaded.api_key is None
    assert loaded.settings().host == "https://ml.example.com"

    api = str(PREFECT_API_URL.value())
    document = httpx.get(f"{api}/block_documents/{document_id}", timeout=30).json()
    assert document["data"].get("api_v2_key") is None
    schema = document["block_schema"]["fields"]
    for key in ("api_key", "api_v2_key"):
        assert_masked(schema, key)
    edited = {**document["data"], "api_v2_key": DEFAULT_V2_KEY}
    for values in (document["data"], edited, {}):
        answer = httpx.post(
            f"{api}/ui/schemas/validate", json={"schema": schema, "values": values}, timeout=30
        ).json()
        assert answer == {"errors": [], "valid": True}, (values, answer)


def test_block_type_is_registered_once_per_process_and_api_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cml_tasks.prefect import blocks

    calls: list[str] = []
    monkeypatch.setattr(
        CMLCredentials,
        "register_type_and_schema",
        classmethod(lambda cls: calls.append(str(PREFECT_API_URL.value()))),
    )
    blocks._register_block_type.cache_clear()
    try:
        for url in ("http://127.0.0.1:1/api", "http://127.0.0.1:1/api", "http://127.0.0.1:2/api"):
            with temporary_settings(updates={PREFECT_API_URL: url}):
                assert blocks.ensure_block_type_registered() is True
        assert calls == ["http://127.0.0.1:1/api", "http://127.0.0.1:2/api"]
    finally:
        blocks._register_block_type.cache_clear()


def test_a_failed_registration_is_logged_not_raised_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cml_tasks.prefect import blocks

    tries: list[int] = []

    def refuse(cls: type[CMLCredentials]) -> None:
        tries.append(1)
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(CMLCredentials, "register_type_and_schema", classmethod(refuse))
    blocks._register_block_type.cache_clear()
    logger = logging.getLogger("test-registration")
    try:
        with caplog.at_level(logging.WARNING, logger="test-registration"):
            assert blocks.ensure_block_type_registered(logger) is False
            assert blocks.ensure_block_type_registered(logger) is False
    finally:
        blocks._register_block_type.cache_clear()
    assert len(tries) == 2  # a failure is not remembered
    message = caplog.records[0].getMessage()
    assert "CML Credentials block type" in message and "connection refused" in message
    assert "prefect block register -m cml_tasks.prefect.blocks" in message


@pytest.mark.usefixtures("prefect_api")
def test_block_type_registration_reaches_the_api() -> None:
    from prefect.client.orchestration import get_client

    from cml_tasks.prefect import blocks

    blocks._register_block_type.cache_clear()
    try:
        assert blocks.ensure_block_type_registered() is True
    finally:
        blocks._register_block_type.cache_clear()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("cml-credentials")
        assert block_type.name == "CML Credentials"
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert schema is not None
    assert schema.checksum == CMLCredentials._calculate_schema_checksum()


RUN_FORM_TITLES = {
    "cml-window-run": {
        "job": "Job page URL",
        "options": "Window cadence and dates",
        "lag": "Windows back (lag)",
        "window_start": "Window start (explicit)",
        "window_end": "Window end (explicit, last day)",
        "credentials": "CML credentials",
    },
    "cml-backfill": {
        "job": "Job page URL",
        "options": "Window cadence and dates",
        "start": "First day",
        "end": "Last day",
        "max_concurrency": "Max concurrent starts",
        "order": "Order",
        "reprocess": "Reprocess",
        "dry_run": "Dry run",
        "follow": "Follow runs to their end",
        "poll_interval": "Poll interval (seconds)",
        "max_wait": "Max wait per run (seconds)",
        "credentials": "CML credentials",
        "project_limit": "Project concurrency limit",
        "scale_out": "Scale out (one flow run per window)",
        "deployment": "Window-run deployment",
    },
    "cml-pipeline-backfill": {
        "start": "First day",
        "end": "Last day",
        "max_concurrency": "Max windows in flight",
        "from_step": "Start again from step",
        "credentials": "CML credentials",
    },
    "cml-pipeline-run": {
        "lag": "Windows back (lag)",
        "from_step": "Start again from step",
        "credentials": "CML credentials",
    },
}


def test_run_forms_title_every_parameter_and_never_show_the_class_name() -> None:
    """Prefect's parameter schema titles a parameter with its name unless told otherwise.
    A model-typed parameter's title is dropped when it equals its model's (pydantic removes
    what the `$ref` repeats): the v2 UI then shows the model's title, the v1 UI the name
    ("Options"); `options` has a title of its own, `pipeline` needs none. The block's own
    schema keeps the title `CMLCredentials`: the server accepts a reference to a saved block
    only through the definition of that title; the choice that refers to it has its own."""
    import json

    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate
    from prefect.utilities.schema_tools.validation import preprocess_schema

    from cml_tasks.prefect.backfill import cml_backfill
    from cml_tasks.prefect.pipeline import cml_pipeline_backfill, cml_pipeline_run
    from cml_tasks.prefect.window_run import cml_window_run

    for flow in (cml_window_run, cml_backfill, cml_pipeline_backfill, cml_pipeline_run):
        schema = parameter_schema(flow.fn).model_dump()
        properties = schema["properties"]
        titles = {name: p["title"] for name, p in properties.items() if "title" in p}
        assert titles.items() >= RUN_FORM_TITLES[flow.name].items(), flow.name
        for name, p in properties.items():
            if name == "pipeline":  # titled by its model in v2, "Pipeline" in v1
                assert schema["definitions"]["Pipeline"]["title"] == "Pipeline"
                continue
            assert p["title"] != name, f"{flow.name}: {name} has no title"
            assert p.get("description"), f"{flow.name}: {name} has no description"
        assert [p["position"] for p in properties.values()] == list(range(len(properties)))
        saved_block, none = properties["credentials"]["anyOf"]  # the v2 form's two choices
        assert saved_block == {
            "$ref": "#/definitions/CMLCredentials",
            "title": "Saved CML Credentials block",
        }
        assert none == {"type": "null"}
        reference = {"$ref": {"block_document_id": "00000000-0000-0000-0000-000000000001"}}
        checked = validate(
            {"credentials": reference},
            preprocess_schema(schema),
            raise_on_error=False,
            ignore_required=True,
        )
        assert checked == [], (flow.name, json.dumps(checked, default=str)[:500])


def test_cadence_is_a_choice_of_units_or_any_other_cadence_as_text() -> None:
    """The run form offers the calendar units in a list, and a text input for any other
    cadence: a schema both forms (and the server's check of a deployment's parameters) accept
    for every valid cadence, "3 months" included."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from cml_tasks.prefect.window_run import cml_window_run
    from cml_tasks.window_options import CADENCE_UNITS, WindowOptions

    every = WindowOptions.model_json_schema()["properties"]["every"]
    choice, other = every["anyOf"]
    assert choice == {
        "type": "string",
        "enum": list(CADENCE_UNITS),
        "title": "Calendar unit",
    }
    assert other == {"type": "string", "title": 'Other (e.g. "3 months")'}
    assert every["default"] == "month" and every["title"] == "Cadence"

    schema = parameter_schema(cml_window_run.fn).model_dump_for_openapi()
    for cadence in [*CADENCE_UNITS, "3 months", "2 weeks"]:
        assert WindowOptions.checked(every=cadence).every == cadence
        validate({"job": "a/b/1", "options": {"every": cadence}}, schema, raise_on_error=True)
