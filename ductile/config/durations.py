"""
Go-syntax durations, and the more permissive schedule C{every} syntax.

Go ductile decodes every C{time.Duration} config field with
C{time.ParseDuration}; files written for it must parse here the same way
(contract §5.5).  Results are float seconds.
"""
from __future__ import annotations

import re
from typing import Any

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

DURATION_EXPECTED = "a Go duration such as 250ms, 10s, 5m, 1h30m or 1.5h"
EVERY_EXPECTED = (
    "a duration such as 30s, 5m, 1h, 2d, 1w, or one of hourly, daily, weekly, monthly"
)

_EVERY_WORDS = {
    "hourly": 3600.0,
    "daily": 86400.0,
    "weekly": 7 * 86400.0,
    "monthly": 30 * 86400.0,
}


def parse_duration(text: Any) -> float:
    """
    Parse a Go duration (C{10s}, C{1h30m}, C{1.5h}, C{-2m}, C{0}) into
    seconds.

    A bare number other than zero is refused, as Go refuses it: C{timeout: 10}
    is almost always a forgotten unit.

    @raise ValueError: when C{text} is not a Go duration.
    """
    if isinstance(text, bool) or text is None:
        raise ValueError(f"expected {DURATION_EXPECTED}")
    if isinstance(text, (int, float)):
        if text == 0:
            return 0.0
        raise ValueError(f"expected {DURATION_EXPECTED} (a bare number has no unit)")
    if not isinstance(text, str):
        raise ValueError(f"expected {DURATION_EXPECTED}")
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"expected {DURATION_EXPECTED}")
    total = 0.0
    pos = 0
    while pos < len(s):
        match = _PART.match(s, pos)
        if match is None:
            raise ValueError(f"expected {DURATION_EXPECTED}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_every(text: Any) -> float:
    """
    Parse a schedule interval: a Go duration, C{Nd} or C{Nw} (N may be
    fractional) or one of C{hourly}, C{daily}, C{weekly}, C{monthly} (30
    days).  The result must be positive.

    @raise ValueError: when C{text} is none of those, or not positive.
    """
    if isinstance(text, str):
        s = text.strip().lower()
        if s in _EVERY_WORDS:
            return _EVERY_WORDS[s]
        match = re.fullmatch(r"(\d+\.?\d*|\.\d+)([dw])", s)
        if match:
            value = float(match.group(1)) * (86400.0 if match.group(2) == "d" else 7 * 86400.0)
        else:
            try:
                value = parse_duration(text)
            except ValueError:
                raise ValueError(f"expected {EVERY_EXPECTED}") from None
    else:
        raise ValueError(f"expected {EVERY_EXPECTED}")
    if value <= 0:
        raise ValueError(f"expected a positive interval ({EVERY_EXPECTED})")
    return value
