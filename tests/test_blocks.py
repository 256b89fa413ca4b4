"""The CML Credentials block as the Prefect UI shows it: field titles with units, descriptions,
logo and docs link; saved and read back; keys stay masked."""

from __future__ import annotations

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
    for key in ("api_key", "api_v2_key"):
        assert {"type": "string", "format": "password", "writeOnly": True} in (
            schema["properties"][key]["anyOf"]
        )


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
