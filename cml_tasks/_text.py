"""Text from a server or a user, made safe to show on a terminal or in a log.

A server answer (an id, a status message) or an echoed input can carry a newline that forges
an extra output line, or an escape sequence that rewrites the terminal. Everything shown to a
person goes through `printable`, which escapes such characters instead of emitting them.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line separators and bidirectional overrides that
# can make shown text read differently from what it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`str(text)` with every control character escaped (`\\n` shown as `\\x0a`)."""
    return _UNSAFE.sub(_escape, str(text))


def has_unsafe(text: str) -> bool:
    """True when `text` holds a character `printable` would escape."""
    return _UNSAFE.search(text) is not None


def columns(header: list[str], rows: list[list[str]]) -> str:
    """`rows` under `header` as aligned plain-text columns, every cell made `printable`.

    Plain text, not a rich table: a dry run of 100 years of days (36,525 rows) prints in
    a fraction of a second, and no server text is read as markup.
    """
    cells = [[printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def shortened(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def markdown_text(text: str) -> str:
    """Text for a markdown table or list: no pipes, line breaks or emphasis (`80x3` stays)."""
    for char in "\\|*_[]<>`":
        text = text.replace(char, "\\" + char)
    return text.replace("\n", " ")
