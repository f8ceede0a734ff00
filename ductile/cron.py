"""
Standard 5-field cron expressions (C{minute hour day-of-month month
day-of-week}) and their next firing in an IANA time zone.

Syntax, as ductile-go's C{scheduleexpr} accepts it: C{*}, single values,
C{a-b} ranges, C{,} lists and C{/step} after C{*} or a range; month names
C{JAN}..C{DEC} and weekday names C{SUN}..C{SAT} (any case); day-of-week 0 or
7 is Sunday.  When both day fields are restricted (neither is exactly C{*})
a day matches if either does (the classic cron OR rule); otherwise only the
restricted one counts.

Time zones are wall-clock: each matching local minute fires exactly once.
A local time repeated when clocks go back fires at its first occurrence
only; a local time skipped when clocks go forward fires once, at the
instant the clocks jump past it (ductile-go skips it, losing e.g. a 01:30
daily job once a year; classic cron runs it, as here).
"""
from __future__ import annotations

import calendar
import math
import os
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs


class CronError(ValueError):
    """A cron expression that cannot be used; the message says why."""


FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = {n.lower(): i for i, n in enumerate(calendar.month_abbr) if n}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_NAMES: tuple[Mapping[str, int] | None, ...] = (None, None, None, _MONTHS, _WEEKDAYS)
#: Longest day-of-month per month (February in a leap year).
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MINUTE = timedelta(minutes=1)


@attrs.frozen
class CronExpr:
    """A parsed expression: the sorted values each field selects."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]  # 0 = Sunday
    days_any: bool
    weekdays_any: bool

    def day_matches(self, year: int, month: int, day: int) -> bool:
        """The day fields' verdict for one date (the OR rule when both are set)."""
        if self.days_any and self.weekdays_any:
            return True
        weekday = (calendar.weekday(year, month, day) + 1) % 7
        if self.days_any:
            return weekday in self.weekdays
        if self.weekdays_any:
            return day in self.days
        return day in self.days or weekday in self.weekdays

    def matches(self, wall: datetime) -> bool:
        """Whether the local wall-clock minute C{wall} is selected."""
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
            and self.day_matches(wall.year, wall.month, wall.day)
        )

    def next_wall(self, start: datetime) -> datetime | None:
        """
        The first selected naive wall-clock minute at or after C{start}
        (seconds ignored); C{None} if none within 9 years (none at all,
        since every expression accepted by L{parse_cron} fires at least
        once in any 8 years: a 29 February included).
        """
        start = start.replace(second=0, microsecond=0, tzinfo=None, fold=0)
        for year in range(start.year, min(start.year + 9, 10000)):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                same_month = (year, month) == (start.year, start.month)
                first = start.day if same_month else 1
                for day in range(first, calendar.monthrange(year, month)[1] + 1):
                    if not self.day_matches(year, month, day):
                        continue
                    same_day = same_month and day == start.day
                    for hour in self.hours:
                        if same_day and hour < start.hour:
                            continue
                        same_hour = same_day and hour == start.hour
                        for minute in self.minutes:
                            if same_hour and minute < start.minute:
                                continue
                            return datetime(year, month, day, hour, minute)
        return None

    def next_fire(self, after: float, zone: tzinfo) -> float:
        """
        The first firing strictly after the epoch time C{after}, as epoch
        seconds, with the expression read as wall-clock time in C{zone}.

        @raise CronError: if it never fires (not for parsed expressions).
        """
        wall = datetime.fromtimestamp(math.floor(after), zone).replace(tzinfo=None, fold=0)
        probe = wall.replace(second=0, microsecond=0)
        # Inside a repeated hour the wall minutes already passed once map to
        # instants at or before `after`; at most a few hours of them.
        for _ in range(100_000):
            candidate = self.next_wall(probe)
            if candidate is None:
                break
            at = wall_to_epoch(candidate, zone)
            if at > after:
                return at
            probe = candidate + _MINUTE
        raise CronError(f"{self.text!r} never fires")


def wall_to_epoch(wall: datetime, zone: tzinfo) -> float:
    """
    The instant of the naive local time C{wall} in C{zone}: its first
    occurrence when clocks went back over it, and the instant the clocks
    jumped past it when it was skipped.
    """
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None, fold=0) == wall:
        return first
    # Skipped: the jump lies between the two readings of this wall time
    # (the old offset's and the new one's).  Find the first second whose
    # wall time is past it.
    other = wall.replace(tzinfo=zone, fold=1).timestamp()
    lo, hi = int(min(first, other)), int(math.ceil(max(first, other)))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None, fold=0) > wall:
            hi = mid
        else:
            lo = mid
    return float(hi)


def parse_cron(text: str) -> CronExpr:
    """
    Parse a 5-field cron expression.

    @raise CronError: naming the field and the bad part, e.g.
        C{minute 61 out of range 0-59}.
    """
    if not isinstance(text, str):
        raise CronError("expected a cron expression such as \"30 2 * * *\" (a string)")
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    sets = [_parse_field(part, i) for i, part in enumerate(parts)]
    weekdays = {0 if d == 7 else d for d in sets[4]}
    expr = CronExpr(
        text=text.strip(),
        minutes=tuple(sorted(sets[0])),
        hours=tuple(sorted(sets[1])),
        days=frozenset(sets[2]),
        months=tuple(sorted(sets[3])),
        weekdays=frozenset(weekdays),
        days_any=parts[2] == "*",
        weekdays_any=parts[4] == "*",
    )
    if not expr.days_any and expr.weekdays_any:
        if not any(d <= _MONTH_DAYS[m] for m in expr.months for d in expr.days):
            raise CronError(
                f"never fires: day-of-month {parts[2]} does not occur in month {parts[3]}"
            )
    return expr


def _parse_field(text: str, index: int) -> set[int]:
    name = FIELD_NAMES[index]
    lo, hi = _BOUNDS[index]
    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f'{name} field "{text}": empty list item')
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f'{name} step "{step_text}" must be a whole number of at least 1')
            step = int(step_text)
        if base == "*":
            first, last = lo, (6 if index == 4 else hi)
        elif "-" in base:
            a, dash, b = base.partition("-")
            first, last = _value(a, index), _value(b, index)
            if index == 4 and last == 0 and first > 0:
                last = 7  # MON-SUN: Sunday closes the week
            if first > last:
                raise CronError(f'{name} range "{base}" runs backwards')
        else:
            if slash:
                raise CronError(
                    f'{name} "{item}": a step needs * or a range, e.g. {base}-{hi}/{step_text}'
                )
            first = last = _value(base, index)
        out.update(range(first, last + 1, step))
    return out


def _value(text: str, index: int) -> int:
    name = FIELD_NAMES[index]
    lo, hi = _BOUNDS[index]
    names = _NAMES[index]
    if names is not None and text.lower() in names:
        return names[text.lower()]
    if not text.isascii() or not text.isdigit():
        hint = " or a name such as JAN" if index == 3 else " or a name such as MON" if index == 4 else ""
        raise CronError(f'{name} "{text}" is not a number{hint}')
    value = int(text)
    if not lo <= value <= hi:
        raise CronError(f"{name} {value} out of range {lo}-{hi}")
    return value


ZONE_EXPECTED = "expected an IANA time zone name such as Europe/London, America/New_York or UTC"


def load_zone(name: str) -> tzinfo:
    """
    The IANA zone C{name}; C{Local} is the process's local zone (as Go's
    C{time.LoadLocation} has it).

    @raise ValueError: naming the zone, if it is unknown.
    """
    if name == "Local":
        return local_zone()
    if name == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f'unknown time zone "{name}"; {ZONE_EXPECTED}') from None


def local_zone(environ: Mapping[str, str] | None = None, localtime: str = "/etc/localtime") -> tzinfo:
    """
    The local zone as Go's C{time.Local} finds it: C{$TZ} (empty means
    UTC), else C{/etc/localtime}, else UTC.
    """
    env = os.environ if environ is None else environ
    if "TZ" in env:
        name = env["TZ"].lstrip(":")
        if not name or name == "UTC":
            return timezone.utc
        try:
            if os.path.isabs(name):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            return timezone.utc
    try:
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (ValueError, OSError):
        return timezone.utc
