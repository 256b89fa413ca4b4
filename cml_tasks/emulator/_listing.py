"""``search_filter``, ``sort`` and paging for the API v2 list endpoints.

Each listed item is reduced to a flat ``{key: text}`` index (``"owner.username"`` etc.), so one
implementation serves projects, jobs and runs. Like CML, text filters match a case-insensitive
SUBSTRING (``{"name": "risk"}`` finds ``risk-analysis``); identifiers match exactly. Clients
must therefore still compare names themselves.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.datastructures import QueryParams

from ._http import ApiError

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 10


@dataclass(frozen=True)
class Listing:
    """What one list endpoint supports: filter keys (exact or substring) and sort keys.

    ``choices`` lists the allowed values of enumerated keys (e.g. run ``status``), matched
    case-insensitively.
    """

    exact_keys: Collection[str]
    substring_keys: Collection[str]
    sort_keys: Collection[str]
    choices: Mapping[str, Collection[str]] = field(default_factory=dict)

    def apply(
        self, items: Sequence[tuple[T, Mapping[str, str]]], query: QueryParams
    ) -> tuple[list[T], str]:
        """Filter, sort and page ``(item, index)`` pairs; return the page and next page token."""
        wanted = self._filter(query.get("search_filter"))
        kept = [(item, index) for item, index in items if _matches(index, wanted, self.exact_keys)]
        for key, descending in reversed(self._sort(query.get("sort"))):
            kept.sort(key=_by(key), reverse=descending)
        return _page([item for item, _ in kept], query.get("page_size"), query.get("page_token"))

    def _filter(self, raw: str | None) -> dict[str, str]:
        if not raw:
            return {}
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:  # too deep to parse: not JSON either
            raise ApiError(400, f"invalid search_filter: not JSON ({exc})") from exc
        if not isinstance(parsed, dict):
            raise ApiError(400, "invalid search_filter: must be a JSON object")
        allowed = {*self.exact_keys, *self.substring_keys}
        wanted: dict[str, str] = {}
        for key, value in parsed.items():
            if key not in allowed:
                raise ApiError(
                    400, f"invalid search_filter key {key!r}; supported: {sorted(allowed)}"
                )
            wanted[key] = self._value(key, value)
        return wanted

    def _value(self, key: str, value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise ApiError(400, f"invalid search_filter: value of {key!r} must be a string")
        text = str(value)
        if key in self.choices:
            text = text.lower().removeprefix("engine_")
            if text not in self.choices[key]:
                raise ApiError(
                    400, f"invalid {key} {value!r}; supported: {sorted(self.choices[key])}"
                )
        return text

    def _sort(self, raw: str | None) -> list[tuple[str, bool]]:
        order: list[tuple[str, bool]] = []
        for part in (raw or "").split(","):
            # A literal '+' arrives as a space when the client did not percent-encode it.
            term = part.strip()
            if not term:
                continue
            descending = term.startswith("-")
            key = term.lstrip("+-").strip()
            if key not in self.sort_keys:
                raise ApiError(
                    400, f"invalid sort key {key!r}; supported: {sorted(self.sort_keys)}"
                )
            order.append((key, descending))
        return order


def _by(key: str) -> Callable[[tuple[object, Mapping[str, str]]], str]:
    """Sort key reading ``key`` from an item's index."""
    return lambda pair: pair[1][key]


def _matches(index: Mapping[str, str], wanted: Mapping[str, str], exact: Collection[str]) -> bool:
    for key, value in wanted.items():
        have = index.get(key, "")
        if key in exact:
            if have != value:
                return False
        elif value.lower() not in have.lower():
            return False
    return True


def _page(items: list[T], raw_size: str | None, raw_token: str | None) -> tuple[list[T], str]:
    size = _page_size(raw_size)
    start = _decode_token(raw_token) if raw_token else 0
    end = start + size
    return items[start:end], _encode_token(end) if end < len(items) else ""


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid page_size {raw!r}: not an integer") from None
    if size < 0:
        raise ApiError(400, f"invalid page_size {size}: must not be negative")
    return size or DEFAULT_PAGE_SIZE


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "offset" or not number.isdigit():
            raise ValueError(text)
        return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, f"invalid page_token {token!r}") from None
