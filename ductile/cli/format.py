"""
Shared output helpers for the inspection commands: aligned tables, times
and durations for people, and JSON with RFC 3339 times for machines.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

from ductile.timestamps import format_rfc3339nano


def when(epoch: float | None) -> str:
    """A time for a table cell: UTC RFC 3339 to the second (C{-} when unset)."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}m"


def truncate(text: Any, width: int) -> str:
    """One line of at most C{width} characters (newlines folded)."""
    if text is None:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        padded = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


#: User data: shown exactly as stored, never reformatted.
OPAQUE = frozenset({"payload", "result", "context", "accepted", "stdout", "baggage", "internal"})


def _timestamps(value: Any, key: str = "") -> Any:
    if key in OPAQUE:
        return value
    if isinstance(value, dict):
        return {k: _timestamps(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_timestamps(v) for v in value]
    if (key.endswith("_at") or key == "at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_rfc3339nano(value)
    return value


def to_json(value: Any) -> str:
    """Indented JSON; our C{*_at} (and C{at}) epochs become RFC 3339 UTC, user data stays as is."""
    return json.dumps(_timestamps(value), indent=2, default=str, ensure_ascii=False)
