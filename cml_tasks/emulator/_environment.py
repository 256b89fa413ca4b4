"""Per-run environment overrides, as both APIs accept them: variable name -> string value."""

from __future__ import annotations

from cml_tasks.environment import ENV_NAME

from ._http import ApiError


def parse_environment(environment: object) -> dict[str, str]:
    """Validate an ``environment`` request field; anything else than names -> strings is a 400."""
    if not isinstance(environment, dict):
        raise ApiError(400, "environment must be an object mapping variable names to strings")
    for name, value in environment.items():
        if not ENV_NAME.fullmatch(name):
            raise ApiError(400, f"invalid environment variable name {name!r}")
        if not isinstance(value, str):
            raise ApiError(400, f"environment variable {name} must be a string")
    return dict(environment)
