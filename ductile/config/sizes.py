"""
Byte sizes such as C{max_body_size: 1MB}.

Go ductile's default body cap is 1 MiB and its examples write C{1MB}, so
C{KB}/C{MB}/C{GB} are 1024-based here, exactly like C{KiB}/C{MiB}/C{GiB}
(contract §5.5).  A plain integer is a number of bytes.
"""
from __future__ import annotations

import re
from typing import Any

SIZE_EXPECTED = "a byte size such as 1048576, 512KB, 1MB, 1MiB or 1GB"

_MULTIPLIERS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

_SIZE = re.compile(r"(\d+\.?\d*|\.\d+)\s*([a-z]*)")


def parse_byte_size(value: Any) -> int:
    """
    Parse a byte size into an int number of bytes.

    @raise ValueError: when C{value} is not a non-negative size.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected {SIZE_EXPECTED}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {SIZE_EXPECTED} (not negative)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {SIZE_EXPECTED}")
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _MULTIPLIERS:
        raise ValueError(f"expected {SIZE_EXPECTED}")
    return int(float(match.group(1)) * _MULTIPLIERS[match.group(2)])
