"""Connection settings, read from `CML_*` environment variables and a `.env` file.

One place decides where credentials come from, so every entry point (CLI, tasks, flows)
fails the same way, before any request, when something is missing or malformed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cml_tasks.errors import CMLConfigError

ENV_PREFIX = "CML_"


class CMLSettings(BaseSettings):
    """Where CML is and how to talk to it. Build with `CMLSettings.load()` for friendly errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
    )

    host: str | None = Field(
        default=None,
        description="Workspace base URL, e.g. https://ml-1234.example.cloudera.site. "
        "Optional when jobs are named by their full page URL.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="API v1 key (Basic auth user name, empty password)."
    )
    api_v2_key: SecretStr | None = Field(default=None, description="API v2 key (Bearer).")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: Path | None = Field(
        default=None, description="CA bundle (PEM) to verify the server with."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for an answer.")
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow sending the API key over plain http:// to a non-loopback host.",
    )

    @field_validator("host")
    @classmethod
    def _host_is_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from cml_tasks.job import normalize_base_url

        return normalize_base_url(value)

    @field_validator("api_key", "api_v2_key")
    @classmethod
    def _empty_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty key is a missing key: never send `Bearer ` or a blank Basic user."""
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> CMLSettings:
        """Read the settings; one `CMLConfigError` names every variable that is malformed."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else "?"
                problems.append(f"{env_var(field)}: {error['msg']}")
            raise CMLConfigError(
                "Invalid CML settings; fix these environment variables (or .env entries): "
                + "; ".join(problems)
            ) from None

    def require(self, *fields: str) -> None:
        """Raise one `CMLConfigError` naming every listed setting that is unset."""
        missing = [env_var(name) for name in fields if getattr(self, name) is None]
        if missing:
            raise CMLConfigError(
                "Missing CML settings; set these environment variables (or .env entries, "
                "or use a CMLCredentials block): " + ", ".join(missing)
            )

    def verify(self) -> bool | str:
        """The httpx `verify` argument: a CA bundle path, or on/off."""
        if self.ca_bundle is not None:
            return str(self.ca_bundle)
        return self.verify_tls


def env_var(field: str) -> str:
    """The environment variable that sets a settings field."""
    return f"{ENV_PREFIX}{field.upper()}"
