"""`CMLCredentials`: the settings as a Prefect Block, stored and edited in the Prefect UI."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from cml_tasks.errors import CMLConfigError
from cml_tasks.settings import CMLSettings


class CMLCredentials(Block):
    """Credentials and connection options for a CML workspace.

    Save once (`CMLCredentials(host=..., api_key=...).save("prod")`), then pass
    `CMLCredentials.load("prod")` to the tasks, or its name to the flows.
    """

    _block_type_name = "CML Credentials"
    _description = "Host and API keys of a Cloudera Machine Learning workspace."

    host: str | None = Field(default=None, description="Workspace base URL, https://...")
    api_key: SecretStr | None = Field(default=None, description="API v1 key.")
    api_v2_key: SecretStr | None = Field(default=None, description="API v2 key.")
    verify_tls: bool = Field(default=True, description="Verify the server's certificate.")
    ca_bundle: str | None = Field(default=None, description="Path of a CA bundle (PEM).")
    connect_timeout: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    allow_insecure_http: bool = Field(
        default=False, description="Allow the key over plain http:// to a non-loopback host."
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


def load_credentials(name: str | None) -> CMLCredentials | None:
    """The saved block named `name`, or None to read the `CML_*` environment."""
    if name is None:
        return None
    try:
        block = CMLCredentials.load(name)
    except ValueError:
        raise CMLConfigError(
            f"No CMLCredentials block named {name!r}: create it in the Prefect UI "
            f"(Blocks > CML Credentials) or with CMLCredentials(...).save({name!r})"
        ) from None
    assert isinstance(block, CMLCredentials)
    return block
