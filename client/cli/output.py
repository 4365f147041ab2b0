"""How `xfer` writes: aligned tables and key/value blocks for people, JSON for scripts.

Text that came from the server (card descriptions, label names, messages)
is escaped before it reaches a terminal: a control character in a card must
never move the cursor, ring the bell or rewrite the screen.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, TextIO


@dataclasses.dataclass
class Io:
    """Where a command writes; injected so tests run the CLI in-process."""

    out: TextIO
    err: TextIO

    def print(self, text: str = "") -> None:
        """A line on stdout."""
        self.out.write(text + "\n")

    def json(self, value: Any) -> None:
        """One JSON document on stdout (json.dumps escapes control characters itself)."""
        self.out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    @property
    def interactive(self) -> bool:
        """Whether a person is watching stderr (progress bars and live logs only then)."""
        return bool(getattr(self.err, "isatty", lambda: False)())


def safe(value: Any) -> str:
    """`value` as text with control characters shown as escapes (\\x1b, \\x07, ...), never executed."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned by their widest cell; numbers right-aligned; every cell escaped."""
    cells = [[str(h) for h in headers]] + [[safe(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[i].rjust(widths[i]) if numeric[i] else r[i].ljust(widths[i]) for i in range(len(headers))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key  value` lines with the keys padded to one width; values escaped."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {safe(value)}" for key, value in pairs)


def when(value: Any) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM`, or `-`."""
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def number(value: float) -> str:
    """Floats with four decimals, other numbers as they are."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def short_version(name: str) -> str:
    """`models/m/versions/3` -> `m:3`."""
    return name.removeprefix("models/").replace("/versions/", ":")


def jsonable(value: Any) -> Any:
    """Dataclasses, dicts and sequences as plain JSON values (anything else as its str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.name.startswith("_")
        }
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
