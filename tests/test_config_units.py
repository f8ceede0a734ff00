"""
The small parsers under the config loader: Go durations, schedule
intervals, byte sizes, .env files and ${VAR} interpolation.
"""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ductile.config import ConfigError

from ductile.config import parse_byte_size, parse_duration, parse_every
from ductile.config.dotenv import parse_dotenv
from ductile.config.interpolate import interpolate, unresolved_vars


class DurationTests(SynchronousTestCase):
    def test_go_units(self) -> None:
        cases = {
            "10s": 10.0,
            "5m": 300.0,
            "1h": 3600.0,
            "1h30m": 5400.0,
            "1.5h": 5400.0,
            "250ms": 0.25,
            "100us": 1e-4,
            "100\u00b5s": 1e-4,
            "3ns": 3e-9,
            "2h45m30.5s": 2 * 3600 + 45 * 60 + 30.5,
            "-2m": -120.0,
            "0": 0.0,
            " 10s ": 10.0,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_duration(text), seconds, msg=text)
        self.assertEqual(parse_duration(0), 0.0)

    def test_bad_durations(self) -> None:
        for bad in ["", "10", "ten", "10x", "1d", "1w", "s", "1h 30m", "h1", None, True, [1]]:
            with self.assertRaises(ValueError, msg=repr(bad)) as cm:
                parse_duration(bad)
            self.assertIn("Go duration", str(cm.exception))

    @given(st.integers(0, 500), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
    def test_combinations(self, h: int, m: int, sec: int, ms: int) -> None:
        text = f"{h}h{m}m{sec}s{ms}ms"
        self.assertAlmostEqual(parse_duration(text), h * 3600 + m * 60 + sec + ms / 1000.0)

    def test_bare_number_says_unit(self) -> None:
        with self.assertRaises(ValueError) as cm:
            parse_duration(10)
        self.assertIn("no unit", str(cm.exception))


class EveryTests(SynchronousTestCase):
    def test_every_forms(self) -> None:
        cases = {
            "30s": 30.0,
            "1h30m": 5400.0,
            "2d": 2 * 86400.0,
            "1.5d": 1.5 * 86400.0,
            "1w": 7 * 86400.0,
            "hourly": 3600.0,
            "daily": 86400.0,
            "weekly": 7 * 86400.0,
            "monthly": 30 * 86400.0,
            "Daily": 86400.0,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_every(text), seconds, msg=text)

    def test_bad_every(self) -> None:
        for bad in ["", "sometimes", "0s", "-1h", "3y", 5, "d"]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                parse_every(bad)


class ByteSizeTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        cases = {
            "1MB": 1048576,
            "1MiB": 1048576,
            "1mb": 1048576,
            "512KB": 512 * 1024,
            "512KiB": 512 * 1024,
            "1GB": 1024**3,
            "2 MB": 2 * 1048576,
            "1.5KB": 1536,
            "100": 100,
            "100B": 100,
            1048576: 1048576,
            0: 0,
        }
        for value, size in cases.items():
            self.assertEqual(parse_byte_size(value), size, msg=repr(value))

    def test_bad_sizes(self) -> None:
        for bad in ["", "MB", "1XB", "-1MB", -5, "1 M B", None, True, 1.5, "lots"]:
            with self.assertRaises(ValueError, msg=repr(bad)) as cm:
                parse_byte_size(bad)
            self.assertIn("byte size", str(cm.exception))


class DotenvTests(SynchronousTestCase):
    def test_parse(self) -> None:
        values, bad = parse_dotenv(
            "# comment\n"
            "A=1\n"
            "export B = two\n"
            "C=\"quoted value\"\n"
            "D='single'\n"
            "E=\"mismatched'\n"
            "\n"
            "not a pair\n"
            "1X=bad key\n"
            "F=a=b\n"
        )
        self.assertEqual(
            values,
            {"A": "1", "B": "two", "C": "quoted value", "D": "single", "E": "\"mismatched'", "F": "a=b"},
        )
        self.assertEqual(bad, [(8, "expected KEY=VALUE"), (9, "expected KEY=VALUE")])


class InterpolateTests(SynchronousTestCase):
    def test_defined_replaced_undefined_literal(self) -> None:
        text = "a: ${A}\nb: ${MISSING}\nc: $A\nd: ${A:-x}\n"
        self.assertEqual(
            interpolate(text, {"A": "one"}),
            "a: one\nb: ${MISSING}\nc: $A\nd: ${A:-x}\n",
        )

    def test_unresolved_vars_walks_structures(self) -> None:
        value = {"a": ["${X}", {"b": "pre-${Y}-${X}"}], "c": 3}
        self.assertEqual(unresolved_vars(value), ["X", "Y"])
        self.assertEqual(unresolved_vars("plain"), [])


class ConfigErrorTests(SynchronousTestCase):
    def test_one_problem_is_the_message(self) -> None:
        error = ConfigError("a.yaml: x: bad", warnings=["w"])
        self.assertEqual(str(error), "a.yaml: x: bad")
        self.assertEqual(error.problems, ("a.yaml: x: bad",))
        self.assertEqual(error.warnings, ("w",))

    def test_several_problems_listed(self) -> None:
        error = ConfigError(["one", "two"])
        self.assertEqual(str(error), "2 config errors:\n  - one\n  - two")
