"""`CMLCredentials`: the settings as a Prefect Block, stored and edited in the Prefect UI."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from prefect.blocks.core import Block
from prefect.logging import get_logger
from prefect.settings import PREFECT_API_URL
from pydantic import ConfigDict, Field, GetJsonSchemaHandler, SecretStr
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from cml_tasks._shared import shared
from cml_tasks.settings import MAX_TIMEOUT, MIN_TIMEOUT, CMLSettings

LOGO_URL = "https://upload.wikimedia.org/wikipedia/commons/5/5a/Cloudera_logo.svg"
"""The Cloudera logo the UI shows for the block type (Wikimedia Commons' stable original).
Prefect's client accepts only http(s) logo URLs, so no `data:` URL; offline, the UI shows
the block without it."""

DOCUMENTATION_URL = "https://docs.cloudera.com/machine-learning/cloud/jobs-pipelines/topics/ml-creating-a-job-c.html"
"""Cloudera's page on creating a CML job (a job's Overview page names it for the flows)."""


BLOCK_TITLE = "CML Credentials"
"""The name the UI shows for the block type in the catalogue."""

REGISTER_COMMAND = "prefect block register -m cml_tasks.prefect.blocks"


def _is_none(value: object) -> bool:
    return value is None


def _masked_key(schema: dict[str, Any]) -> None:
    """An optional key's JSON schema as one masked string input: the UI renders
    `{"type": "string", "format": "password"}` as a password input, but an optional field's
    `anyOf: [<that>, {"type": "null"}]` as a choice of kinds (v2) or a plain textarea (v1).

    Optional still (not `required`), but without `"default": null`, which that schema
    refuses: a form left empty sends no key, and the field's default (None) applies. A block
    saved without a key stores none either (`exclude_if`), so its edit form validates too."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema.update(type="string", format="password", writeOnly=True)


class CMLCredentials(Block):
    """Credentials and connection options for a CML workspace.

    Save once (`CMLCredentials(host=..., api_key=...).save("prod")`), then pass
    `CMLCredentials.load("prod")` to the tasks and flows, or pick it in a flow's run form.
    """

    # No unknown fields: with every field optional, a block that allowed extras would also
    # match a `{"$ref": ...}` parameter, and Prefect's schema (oneOf block or reference)
    # would then refuse a scale-out run's reference to a saved block as ambiguous.
    # Its schema keeps the class's title: Prefect's server lets a parameter refer to a saved
    # block (`{"$ref": ...}`) through the definition whose key is that title
    # (`prefect.utilities.schema_tools.validation.preprocess_schema`); another title makes
    # the server refuse every scale-out run that names a saved block.
    model_config = ConfigDict(extra="forbid")

    _block_type_name = BLOCK_TITLE
    _description = (
        "Workspace URL, API keys and connection options of a Cloudera Machine Learning (CML) "
        "workspace, for the cml_tasks tasks and the cml-window-run and cml-backfill flows."
    )
    _logo_url = LOGO_URL  # type: ignore[assignment]  # pydantic's HttpUrl accepts the text
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _code_example = """
    ```python
    from cml_tasks.prefect.blocks import CMLCredentials

    credentials = CMLCredentials.load("BLOCK_NAME")
    ```
    """

    host: str | None = Field(
        default=None,
        title="Workspace URL",
        description="Base URL of the CML workspace, e.g. https://ml-1234.example.cloudera.site. "
        "Optional when jobs are named by their full Overview page URL.",
        examples=["https://ml-1234.example.cloudera.site"],
    )
    api_key: SecretStr | None = Field(
        default=None,
        title="API v1 key",
        description="The API v1 key of the user the jobs run as (User Settings > API Keys): "
        "starts runs.",
        json_schema_extra=_masked_key,
        exclude_if=_is_none,
    )
    api_v2_key: SecretStr | None = Field(
        default=None,
        title="API v2 key",
        description="An API v2 key of the same user: follows runs to their end and resolves a "
        "start whose outcome is unknown. Differs from the v1 key.",
        json_schema_extra=_masked_key,
        exclude_if=_is_none,
    )
    verify_tls: bool = Field(
        default=True,
        title="Verify TLS certificate",
        description="Verify the workspace's TLS certificate. Turn off only for a test workspace.",
    )
    ca_bundle: str | None = Field(
        default=None,
        title="CA bundle (PEM path)",
        description="Path, on the machine that runs the flow, of a PEM file of the CA "
        "certificates to verify the workspace with (a private CA).",
    )
    connect_timeout: float = Field(
        default=10.0,
        ge=MIN_TIMEOUT,
        le=MAX_TIMEOUT,
        title="Connect timeout (seconds)",
        description="Seconds to wait for a connection to the workspace.",
    )
    timeout: float = Field(
        default=30.0,
        ge=MIN_TIMEOUT,
        le=MAX_TIMEOUT,
        title="Timeout (seconds)",
        description="Seconds to wait for each answer from the workspace.",
    )
    allow_insecure_http: bool = Field(
        default=False,
        title="Allow plain HTTP",
        description="Allow sending the API keys over plain http:// to a host other than this "
        "machine (loopback). Off: such a workspace URL is refused.",
    )

    def settings(self) -> CMLSettings:
        """The same fields as `CMLSettings`; environment variables do not override them."""
        return CMLSettings.load(
            host=self.host,
            api_key=self.api_key,
            api_v2_key=self.api_v2_key,
            verify_tls=self.verify_tls,
            ca_bundle=self.ca_bundle,
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            allow_insecure_http=self.allow_insecure_http,
        )


def ui_title(title: str) -> Any:
    """A flow parameter's title in the run form, for `Annotated[type, ui_title(...)]`.

    Prefect titles every parameter with its name (`Field(title=name)` in
    `prefect.utilities.callables.parameter_schema`), over any `Field(title=...)`; only a
    `json_schema_extra` title, merged after it, reaches the schema."""
    return Field(json_schema_extra={"title": title})


class _ChoiceTitle:
    """Titles a union member in the run form, beside its `$ref`: the v2 UI labels each choice
    of an `anyOf` with its title, else with its model's, which for a block is the class name
    (`CMLCredentials`, the key a saved block is referred by, so it stays)."""

    def __init__(self, title: str) -> None:
        self.title = title

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "title": self.title}


CredentialsParameter = Annotated[
    Annotated[CMLCredentials, _ChoiceTitle("Saved CML Credentials block")] | None,
    ui_title("CML credentials"),
]
"""The flows' `credentials` parameter: a saved block, titled in the run form (not
`credentials`, and never the class name, neither as the parameter nor as its choice)."""


@shared
def _register_block_type(api_url: str) -> None:
    """Register the block type and its schema on the API at `api_url`, once per process (a
    failure is not remembered: the next flow run tries again)."""
    CMLCredentials.register_type_and_schema()


def ensure_block_type_registered(
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> bool:
    """Make the CML Credentials block type available in the UI's Blocks catalogue (as
    `prefect block register -m cml_tasks.prefect.blocks` does), once per process and API URL.

    The flows call it as they start, so a user finds the block type after a first run. A
    failure is logged, never raised: the flow does not need the block type to run. True when
    the block type is registered."""
    api_url = str(PREFECT_API_URL.value() or "")
    try:
        _register_block_type(api_url)
    except Exception as error:
        (logger or get_logger("cml_tasks")).warning(
            "Could not register the %s block type on the Prefect API (%s: %s); the flow goes "
            "on. To list it in the Blocks catalogue, run: %s",
            BLOCK_TITLE,
            type(error).__name__,
            error,
            REGISTER_COMMAND,
        )
        return False
    return True
