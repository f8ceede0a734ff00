"""
The cron parser and next-firing arithmetic, DST transitions included.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ductile.cron import CronError, CronExpr, load_zone, local_zone, parse_cron, wall_to_epoch

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # 30-minute DST shifts
UTC = timezone.utc


def at(zone, *fields, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=zone, fold=fold).timestamp()


def firings(expr: CronExpr, zone, start: float, count: int) -> list[str]:
    out, t = [], start
    for _ in range(count):
        t = expr.next_fire(t, zone)
        out.append(datetime.fromtimestamp(t, zone).isoformat())
    return out


class ParseTests(SynchronousTestCase):
    def test_fields(self) -> None:
        e = parse_cron("0,30 9-17/4 1,15 JAN-mar,dec mon-FRI")
        self.assertEqual(e.minutes, (0, 30))
        self.assertEqual(e.hours, (9, 13, 17))
        self.assertEqual(e.days, {1, 15})
        self.assertEqual(e.months, (1, 2, 3, 12))
        self.assertEqual(e.weekdays, {1, 2, 3, 4, 5})
        self.assertEqual((e.days_any, e.weekdays_any), (False, False))

    def test_stars_and_steps(self) -> None:
        e = parse_cron("*/15 * * * *")
        self.assertEqual(e.minutes, (0, 15, 30, 45))
        self.assertEqual(e.hours, tuple(range(24)))
        self.assertEqual(e.weekdays, set(range(7)))
        self.assertEqual((e.days_any, e.weekdays_any), (True, True))
        self.assertEqual(parse_cron("* * * * */2").weekdays, {0, 2, 4, 6})
        self.assertFalse(parse_cron("* * */1 * *").days_any)

    def test_sunday_is_0_or_7(self) -> None:
        self.assertEqual(parse_cron("0 0 * * 7").weekdays, {0})
        self.assertEqual(parse_cron("0 0 * * 5-7").weekdays, {5, 6, 0})
        self.assertEqual(parse_cron("0 0 * * mon-sun").weekdays, set(range(7)))
        self.assertEqual(parse_cron("0 0 * * SUN").weekdays, {0})

    def test_errors(self) -> None:
        cases = {
            "61 * * * *": "minute 61 out of range 0-59",
            "* 24 * * *": "hour 24 out of range 0-23",
            "* * 0 * *": "day-of-month 0 out of range 1-31",
            "* * * 13 *": "month 13 out of range 1-12",
            "* * * * 8": "day-of-week 8 out of range 0-7",
            "* * * *": "expected 5 fields (minute hour day-of-month month day-of-week), got 4",
            "0 0 * * * *": "expected 5 fields (minute hour day-of-month month day-of-week), got 6",
            "": "expected 5 fields (minute hour day-of-month month day-of-week), got 0",
            "x * * * *": 'minute "x" is not a number',
            "* * * foo *": 'month "foo" is not a number or a name such as JAN',
            "* * * * monday": 'day-of-week "monday" is not a number or a name such as MON',
            "5/15 * * * *": 'minute "5/15": a step needs * or a range, e.g. 5-59/15',
            "*/0 * * * *": 'minute step "0" must be a whole number of at least 1',
            "*/x * * * *": 'minute step "x" must be a whole number of at least 1',
            "1,,2 * * * *": 'minute field "1,,2": empty list item',
            "5-2 * * * *": 'minute range "5-2" runs backwards',
            "0 0 30 2 *": "never fires: day-of-month 30 does not occur in month 2",
            "0 0 31 4,6 *": "never fires: day-of-month 31 does not occur in month 4,6",
            "@daily": "expected 5 fields (minute hour day-of-month month day-of-week), got 1",
            "? * * * *": 'minute "?" is not a number',
            "-1 * * * *": 'minute "" is not a number',
        }
        for text, message in cases.items():
            with self.subTest(text=text):
                e = self.assertRaises(CronError, parse_cron, text)
                self.assertEqual(str(e), message)
        self.assertRaises(CronError, parse_cron, 5)

    def test_never_fires_check_allows_weekday_rescue(self) -> None:
        """Feb 30 with a weekday set still fires (OR rule): Mondays of February."""
        e = parse_cron("0 0 30 2 mon")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 1, 1), 2),
                         ["2026-02-02T00:00:00+00:00", "2026-02-09T00:00:00+00:00"])


class NextFireTests(SynchronousTestCase):
    def test_every_quarter_hour(self) -> None:
        e = parse_cron("*/15 * * * *")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 5, 1, 10, 7, 30), 3),
                         ["2026-05-01T10:15:00+00:00", "2026-05-01T10:30:00+00:00", "2026-05-01T10:45:00+00:00"])

    def test_strictly_after(self) -> None:
        """A firing exactly at C{after} is not repeated; one second before it is."""
        e = parse_cron("0 * * * *")
        self.assertEqual(e.next_fire(at(UTC, 2026, 5, 1, 10), UTC), at(UTC, 2026, 5, 1, 11))
        self.assertEqual(e.next_fire(at(UTC, 2026, 5, 1, 9, 59, 59), UTC), at(UTC, 2026, 5, 1, 10))
        self.assertEqual(e.next_fire(at(UTC, 2026, 5, 1, 9, 59, 59) + 0.5, UTC), at(UTC, 2026, 5, 1, 10))

    def test_month_end(self) -> None:
        e = parse_cron("0 12 31 * *")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 1, 31, 13), 3),
                         ["2026-03-31T12:00:00+00:00", "2026-05-31T12:00:00+00:00", "2026-07-31T12:00:00+00:00"])
        e = parse_cron("59 23 28-31 * *")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 2, 27), 2),
                         ["2026-02-28T23:59:00+00:00", "2026-03-28T23:59:00+00:00"])

    def test_year_end(self) -> None:
        e = parse_cron("0 0 1 1 *")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 12, 31, 23, 59), 2),
                         ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"])

    def test_feb_29(self) -> None:
        e = parse_cron("0 6 29 2 *")
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 3, 1), 3),
                         ["2028-02-29T06:00:00+00:00", "2032-02-29T06:00:00+00:00", "2036-02-29T06:00:00+00:00"])
        # 2100 is not a leap year: eight years on.
        self.assertEqual(firings(e, UTC, at(UTC, 2097, 1, 1), 1), ["2104-02-29T06:00:00+00:00"])

    def test_day_of_month_or_day_of_week(self) -> None:
        """Both restricted: either matches.  2026-02-13 is a Friday."""
        both = parse_cron("0 0 13 * 5")
        self.assertEqual(firings(both, UTC, at(UTC, 2026, 2, 1), 4), [
            "2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00",
            "2026-02-20T00:00:00+00:00", "2026-02-27T00:00:00+00:00",
        ])
        self.assertEqual(firings(both, UTC, at(UTC, 2026, 3, 10), 2),
                         ["2026-03-13T00:00:00+00:00", "2026-03-20T00:00:00+00:00"])
        dom_only = parse_cron("0 0 13 * *")
        self.assertEqual(firings(dom_only, UTC, at(UTC, 2026, 2, 1), 2),
                         ["2026-02-13T00:00:00+00:00", "2026-03-13T00:00:00+00:00"])
        dow_only = parse_cron("0 0 * * fri")
        self.assertEqual(firings(dow_only, UTC, at(UTC, 2026, 2, 1), 2),
                         ["2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00"])
        # As in ductile-go, only a literal * leaves a day field unrestricted:
        # */1 restricts, so the OR rule makes this fire daily.
        quirk = parse_cron("0 0 */1 * fri")
        self.assertEqual(firings(quirk, UTC, at(UTC, 2026, 2, 1), 2),
                         ["2026-02-02T00:00:00+00:00", "2026-02-03T00:00:00+00:00"])

    def test_weekdays_business_hours(self) -> None:
        e = parse_cron("0 9-17/8 * * MON-FRI")  # 2026-05-01 is a Friday
        self.assertEqual(firings(e, UTC, at(UTC, 2026, 5, 1, 10), 3),
                         ["2026-05-01T17:00:00+00:00", "2026-05-04T09:00:00+00:00", "2026-05-04T17:00:00+00:00"])

    def test_in_zone(self) -> None:
        e = parse_cron("0 9 * * *")
        self.assertEqual(e.next_fire(at(UTC, 2026, 7, 1), NEW_YORK), at(UTC, 2026, 7, 1, 13))
        self.assertEqual(e.next_fire(at(UTC, 2026, 1, 1), NEW_YORK), at(UTC, 2026, 1, 1, 14))

    # Europe/London: 2026-03-29 01:00 GMT -> 02:00 BST; 2026-10-25 02:00 BST -> 01:00 GMT.
    def test_london_spring_forward_skipped_time_fires_once_at_the_jump(self) -> None:
        e = parse_cron("30 1 * * *")
        self.assertEqual(firings(e, LONDON, at(LONDON, 2026, 3, 28, 12), 3), [
            "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00", "2026-03-31T01:30:00+01:00",
        ])
        several = parse_cron("0,15,30,45 1,2 * * *")
        self.assertEqual(firings(several, LONDON, at(LONDON, 2026, 3, 29, 0, 50), 3), [
            "2026-03-29T02:00:00+01:00", "2026-03-29T02:15:00+01:00", "2026-03-29T02:30:00+01:00",
        ])

    def test_london_spring_forward_frequent_schedule(self) -> None:
        e = parse_cron("*/20 * * * *")
        self.assertEqual(firings(e, LONDON, at(LONDON, 2026, 3, 29, 0, 30), 4), [
            "2026-03-29T00:40:00+00:00", "2026-03-29T02:00:00+01:00",
            "2026-03-29T02:20:00+01:00", "2026-03-29T02:40:00+01:00",
        ])

    def test_london_fall_back_repeated_hour_fires_once(self) -> None:
        e = parse_cron("30 1 * * *")
        self.assertEqual(firings(e, LONDON, at(LONDON, 2026, 10, 24, 12), 3), [
            "2026-10-25T01:30:00+01:00",
            "2026-10-26T01:30:00+00:00", "2026-10-27T01:30:00+00:00",
        ])
        # Asked from inside the second pass of the hour, it does not refire.
        inside = at(LONDON, 2026, 10, 25, 1, 45, fold=1)
        self.assertEqual(firings(e, LONDON, inside, 1), ["2026-10-26T01:30:00+00:00"])
        every = parse_cron("*/30 * * * *")
        self.assertEqual(firings(every, LONDON, at(LONDON, 2026, 10, 25, 0, 45), 4), [
            "2026-10-25T01:00:00+01:00", "2026-10-25T01:30:00+01:00",
            "2026-10-25T02:00:00+00:00", "2026-10-25T02:30:00+00:00",
        ])

    # America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    def test_new_york_transitions(self) -> None:
        e = parse_cron("30 2 * * *")
        self.assertEqual(firings(e, NEW_YORK, at(NEW_YORK, 2026, 3, 7, 12), 2),
                         ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"])
        e = parse_cron("0 1 * * *")
        self.assertEqual(firings(e, NEW_YORK, at(NEW_YORK, 2026, 10, 31, 12), 2),
                         ["2026-11-01T01:00:00-04:00", "2026-11-02T01:00:00-05:00"])

    def test_lord_howe_half_hour_shift(self) -> None:
        """2026-04-05 02:00 LHDT (+11) -> 01:30 LHST (+10:30)."""
        e = parse_cron("45 1 * * *")
        self.assertEqual(firings(e, LORD_HOWE, at(LORD_HOWE, 2026, 4, 4, 12), 2),
                         ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"])

    def test_wall_to_epoch(self) -> None:
        self.assertEqual(wall_to_epoch(datetime(2026, 3, 29, 1, 30), LONDON), at(UTC, 2026, 3, 29, 1))
        self.assertEqual(wall_to_epoch(datetime(2026, 10, 25, 1, 30), LONDON), at(UTC, 2026, 10, 25, 0, 30))
        self.assertEqual(wall_to_epoch(datetime(2026, 3, 8, 2, 59), NEW_YORK), at(UTC, 2026, 3, 8, 7))

    @settings(max_examples=60, deadline=None)
    @given(
        minutes=st.one_of(st.just("*"), st.sets(st.integers(0, 59), min_size=1, max_size=4).map(
            lambda s: ",".join(map(str, sorted(s)))), st.sampled_from(["*/7", "*/20", "10-40/15"])),
        hours=st.one_of(st.just("*"), st.sets(st.integers(0, 23), min_size=1, max_size=6).map(
            lambda s: ",".join(map(str, sorted(s))))),
        days=st.sampled_from(["*", "*", "1-15", "25,29,30,31", "*/2"]),
        weekdays=st.sampled_from(["*", "*", "0", "1-5", "sat,sun"]),
        zone=st.sampled_from([LONDON, NEW_YORK, LORD_HOWE]),
        transition=st.sampled_from([(2026, 3, 8), (2026, 3, 29), (2026, 4, 5), (2026, 10, 4),
                                    (2026, 10, 25), (2026, 11, 1)]),
        offset_minutes=st.integers(-36 * 60, 12 * 60),
    )
    def test_matches_brute_force(self, minutes, hours, days, weekdays, zone, transition, offset_minutes) -> None:
        """
        Over three days around a DST change, next_fire reproduces a
        minute-by-minute walk: a UTC minute fires when its wall time matches
        on its first occurrence, or when clocks jumped over a matching time.
        """
        e = parse_cron(f"{minutes} {hours} {days} * {weekdays}")
        start = at(zone, *transition) + offset_minutes * 60 + 17
        end = start + 3 * 86400
        expected = []
        u = (int(start) // 60 + 1) * 60
        while u <= end:
            wall = datetime.fromtimestamp(u, zone)
            prev = datetime.fromtimestamp(u - 60, zone).replace(tzinfo=None, fold=0)
            here = wall.replace(tzinfo=None, fold=0)
            fire = e.matches(here) and wall.fold == 0
            step = prev + timedelta(minutes=1)
            while not fire and step < here:
                fire = e.matches(step)
                step += timedelta(minutes=1)
            if fire:
                expected.append(float(u))
            u += 60
        got, t = [], start
        while True:
            t = e.next_fire(t, zone)
            if t > end:
                break
            got.append(t)
        self.assertEqual(got, expected)


class ZoneTests(SynchronousTestCase):
    def test_load_zone(self) -> None:
        self.assertEqual(load_zone("Europe/London"), LONDON)
        self.assertIs(load_zone("UTC"), timezone.utc)
        for bad in ("Mars/Olympus", "../etc/passwd", "", "europe/london "):
            with self.subTest(bad=bad):
                e = self.assertRaises(ValueError, load_zone, bad)
                self.assertEqual(
                    str(e),
                    f'unknown time zone "{bad}"; expected an IANA time zone name such as '
                    "Europe/London, America/New_York or UTC",
                )

    def test_local_zone_like_go(self) -> None:
        """$TZ first (empty: UTC; unknown: UTC), then /etc/localtime, then UTC."""
        self.assertEqual(local_zone({"TZ": "America/New_York"}), NEW_YORK)
        self.assertEqual(local_zone({"TZ": ":Europe/London"}), LONDON)
        self.assertIs(local_zone({"TZ": ""}), timezone.utc)
        self.assertIs(local_zone({"TZ": "Nowhere/Never"}), timezone.utc)
        path = "/usr/share/zoneinfo/Europe/London"
        zone = local_zone({}, localtime=path)
        self.assertEqual(zone.utcoffset(datetime(2026, 7, 1)), timedelta(hours=1))
        self.assertIs(local_zone({}, localtime=os.path.join(self.mktemp(), "missing")), timezone.utc)
