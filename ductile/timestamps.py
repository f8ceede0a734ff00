"""
RFC 3339 timestamps as Go ductile writes and reads them.

Go's C{time.RFC3339Nano} drops trailing fractional zeros and writes C{Z} for
UTC; the relay signs the timestamp header verbatim, so the exact text matters
on the sending side, and the receiver must accept any offset and any fraction.
"""
from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    re.ASCII,
)
_UNIX_SECONDS = re.compile(r"^[+-]?\d+$", re.ASCII)


def format_rfc3339nano(epoch_seconds: float) -> str:
    """
    Format seconds since the epoch the way Go's RFC3339Nano does in UTC.
    """
    # Floats carry about microsecond precision at today's epoch; finer digits
    # would be noise, so round there (Go then drops the trailing zeros).
    micros_total = int(round(epoch_seconds * 1_000_000))
    whole, micros = divmod(micros_total, 1_000_000)
    nanos = micros * 1000
    text = _whole_seconds(whole)
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=4)
def _whole_seconds(whole: int) -> str:
    # Events stamped within the same second share this part (the ingress
    # stamps every accepted relay): strftime once per second, not per event.
    return datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def parse_rfc3339(text: str) -> float:
    """
    Parse an RFC 3339 timestamp (optional fraction, any offset) to epoch seconds.

    @raise ValueError: when C{text} is not RFC 3339.
    """
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    fraction = m.group(7) or ""
    if m.group(8):
        offset = timedelta(0)
    else:
        sign = 1 if m.group(9) == "+" else -1
        offset = sign * timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
    dt = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    frac = int(fraction.ljust(9, "0")) / 1_000_000_000 if fraction else 0.0
    return dt.timestamp() + frac


def parse_relay_timestamp(text: str) -> float:
    """
    Parse an C{X-Ductile-Timestamp} value: RFC 3339, else base-10 unix seconds.

    @raise ValueError: when it is neither.
    """
    try:
        return parse_rfc3339(text)
    except ValueError:
        if _UNIX_SECONDS.match(text):
            return float(int(text))
        raise
