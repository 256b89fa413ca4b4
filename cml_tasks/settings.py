"""Connection settings, read from `CML_*` environment variables and a `.env` file.

One place decides where credentials come from, so every entry point (CLI, tasks, flows)
fails the same way, before any request, when something is missing or malformed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cml_tasks._text import has_unsafe, printable
from cml_tasks.errors import CMLConfigError

ENV_PREFIX = "CML_"
MAX_TIMEOUT = 3600.0
"""Seconds; a longer timeout is a typo (and `inf` would overflow the socket layer)."""
MIN_TIMEOUT = 0.1
"""Seconds; a shorter timeout (`1e-9`) cannot even connect, so every request would fail."""
_MAX_KEY = 1024
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


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
    connect_timeout: float = Field(
        default=10.0,
        ge=MIN_TIMEOUT,
        le=MAX_TIMEOUT,
        allow_inf_nan=False,
        description="Seconds to connect.",
    )
    timeout: float = Field(
        default=30.0,
        ge=MIN_TIMEOUT,
        le=MAX_TIMEOUT,
        allow_inf_nan=False,
        description="Seconds to wait for an answer.",
    )
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

        return normalize_base_url(value, what="CML_HOST")

    @field_validator("api_key", "api_v2_key")
    @classmethod
    def _key_is_one_token(cls, value: SecretStr | None) -> SecretStr | None:
        """Blanks around a key are dropped; an empty key is a missing key (never send `Bearer `
        or a blank Basic user); any other whitespace or control character (a CR from a .env
        file saved on Windows) is an error here rather than a broken header later. The
        message never shows the key."""
        if value is None:
            return None
        key = value.get_secret_value().strip(" ")
        if not key:
            return None
        if has_unsafe(key) or any(char.isspace() for char in key):
            raise ValueError(
                "the key contains whitespace or a control character (a Windows line ending "
                "in a .env file?); remove it"
            )
        if len(key) > _MAX_KEY:
            raise ValueError(f"the key is longer than {_MAX_KEY} characters")
        return SecretStr(key)

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_is_pem(cls, value: Path | None) -> Path | None:
        """A file holding PEM certificates; the TLS layer reads it for real when a client is
        made, and a broken one is reported as this setting then too."""
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        try:
            content = value.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror}") from None
        if _PEM_CERTIFICATE not in content:
            raise ValueError(f"{value} is not a PEM CA bundle (no {_PEM_CERTIFICATE.decode()})")
        return value

    @classmethod
    def load(cls, *, required: Iterable[str] = (), **overrides: Any) -> CMLSettings:
        """Read the settings; one `CMLConfigError` names every variable that is malformed,
        and every one of `required` that is missing."""
        required = tuple(required)
        _check_env_files(overrides.get("_env_file", cls.model_config.get("env_file")))
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            problems: dict[str, str] = {}
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else "?"
                message = error["msg"].removeprefix("Value error, ")
                problems.setdefault(field, f"{env_var(field)}: {message}")
            for field in cls._missing(required, set(problems), overrides):
                problems[field] = f"{env_var(field)}: missing"
            raise CMLConfigError(
                "Invalid CML settings; fix these environment variables (or .env entries): "
                + "; ".join(problems.values())
            ) from None
        settings.require(*required)
        return settings

    @classmethod
    def _missing(
        cls, required: tuple[str, ...], malformed: set[str], overrides: dict[str, Any]
    ) -> list[str]:
        """Which `required` settings are unset, found with the malformed ones at defaults."""
        if not required:
            return []
        defaults = {
            name: cls.model_fields[name].default for name in malformed if name in cls.model_fields
        }
        try:
            probe = cls(**{**overrides, **defaults})
        except ValidationError:
            return []
        return [name for name in required if name not in malformed and getattr(probe, name) is None]

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


def _check_env_files(env_file: object) -> None:
    """Refuse a `.env` that is not a regular UTF-8 file before pydantic-settings reads it:
    a FIFO would block every command, and another encoding would end in a traceback."""
    if env_file is None:
        return
    names: list[Any] = (
        [env_file] if isinstance(env_file, str | os.PathLike) else list(env_file)  # type: ignore[call-overload]
    )
    for name in names:
        path = Path(name).expanduser()
        shown = printable(path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CMLConfigError(f"Cannot read the settings file {shown}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise CMLConfigError(
                f"The settings file {shown} is not a regular file (a FIFO, device or "
                "directory); refusing to read it: replace it with a plain file"
            )
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CMLConfigError(
                f"The settings file {shown} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                f"at offset {exc.start}; saved as Latin-1 or UTF-16?): save it as UTF-8"
            ) from None
        except OSError as exc:
            raise CMLConfigError(f"Cannot read the settings file {shown}: {exc.strerror}") from None
