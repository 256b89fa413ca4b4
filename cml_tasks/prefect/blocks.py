"""`CMLCredentials`: the settings as a Prefect Block, stored and edited in the Prefect UI."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from cml_tasks.settings import MAX_TIMEOUT, CMLSettings

LOGO_URL = "https://upload.wikimedia.org/wikipedia/commons/5/5a/Cloudera_logo.svg"
"""The Cloudera logo the UI shows for the block type (Wikimedia Commons' stable original).
Prefect's client accepts only http(s) logo URLs, so no `data:` URL; offline, the UI shows
the block without it."""

DOCUMENTATION_URL = "https://docs.cloudera.com/machine-learning/cloud/jobs-pipelines/topics/ml-creating-a-job-c.html"
"""Cloudera's page on creating a CML job (a job's Overview page names it for the flows)."""


class CMLCredentials(Block):
    """Credentials and connection options for a CML workspace.

    Save once (`CMLCredentials(host=..., api_key=...).save("prod")`), then pass
    `CMLCredentials.load("prod")` to the tasks and flows, or pick it in a flow's run form.
    """

    # No unknown fields: with every field optional, a block that allowed extras would also
    # match a `{"$ref": ...}` parameter, and Prefect's schema (oneOf block or reference)
    # would then refuse a scale-out run's reference to a saved block as ambiguous.
    model_config = ConfigDict(extra="forbid")

    _block_type_name = "CML Credentials"
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
    )
    api_v2_key: SecretStr | None = Field(
        default=None,
        title="API v2 key",
        description="An API v2 key of the same user: follows runs to their end and resolves a "
        "start whose outcome is unknown. Differs from the v1 key.",
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
        gt=0,
        le=MAX_TIMEOUT,
        title="Connect timeout (seconds)",
        description="Seconds to wait for a connection to the workspace.",
    )
    timeout: float = Field(
        default=30.0,
        gt=0,
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
