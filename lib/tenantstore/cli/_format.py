"""Output shared by the command groups: terminal-safe text, tables, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

__all__ = ["iso", "print_json", "print_table", "printable", "shorten"]

NAME_WIDTH = 40


def printable(text: str) -> str:
    """`text` safe for a terminal: control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def shorten(text: str, width: int = NAME_WIDTH) -> str:
    """`text` made printable and cut to `width` characters (an ellipsis ends it)."""
    text = printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: frozenset[int] = frozenset(),
) -> None:
    """Columns padded to their widest cell; columns in `right` align right."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
