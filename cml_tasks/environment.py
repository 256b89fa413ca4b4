"""The environment a job run gets: validated before it is sent, as CML requires string values."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from cml_tasks._text import printable
from cml_tasks.errors import CMLInputError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A valid variable name, with `fullmatch` (`$` would let a trailing newline through)."""


def check_name(name: object) -> str:
    """An environment-variable name a shell would accept, or a `CMLInputError`."""
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise CMLInputError(
            f"Invalid environment variable name {printable(repr(name)[:120])}: use letters, "
            "digits and '_', not starting with a digit"
        )
    return name


def check_text(name: str, value: str) -> str:
    """A value that is UTF-8 text: bytes a terminal could not decode (`-e $'A=\\xff'`) reach
    Python as lone surrogates, which would be sent to CML as garbage and start a run."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        shown = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise CMLInputError(
            f"Environment variable {name} is not valid UTF-8 text ({shown} at position "
            f"{exc.start}): CML passes values as text; give it as UTF-8"
        ) from None
    return value


def validate_environment(environment: Mapping[str, object] | None) -> dict[str, str]:
    """Names must be valid variable names and values strings (CML rejects anything else)."""
    if environment is None:
        return {}
    if not isinstance(environment, Mapping):
        raise CMLInputError(
            f"environment must be a mapping of names to strings, not {environment!r}"
        )
    checked: dict[str, str] = {}
    for name, value in environment.items():
        check_name(name)
        if not isinstance(value, str):
            raise CMLInputError(
                f"Environment variable {name} must be a string, not {type(value).__name__} "
                f"({value!r}); CML passes values as text"
            )
        checked[name] = check_text(name, value)
    return checked


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`NAME=VALUE` strings (the CLI's `-e`), validated; a repeated name is an error."""
    environment: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CMLInputError(
                f"Invalid environment assignment {printable(repr(item)[:120])}: expected NAME=VALUE"
            )
        check_name(name)
        if name in environment:
            raise CMLInputError(f"Environment variable {name} is given twice")
        environment[name] = check_text(name, value)
    return environment
