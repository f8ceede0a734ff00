"""
The benchmark suite's shared helpers (bench/common.py): medians, ratios,
percentiles and the table.  The benchmarks themselves are scripts, never
part of the test suite.
"""
from __future__ import annotations

import importlib.util
import os

from twisted.trial.unittest import SynchronousTestCase

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "common.py")


def _load_common():
    spec = importlib.util.spec_from_file_location("bench_common", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


class StatisticsTests(SynchronousTestCase):
    def test_median_odd_count(self) -> None:
        self.assertEqual(common.median([5.0, 1.0, 3.0]), 3.0)

    def test_median_even_count_is_mean_of_middle_two(self) -> None:
        self.assertEqual(common.median([4, 1, 3, 2]), 2.5)

    def test_median_of_nothing_is_an_error(self) -> None:
        e = self.assertRaises(ValueError, common.median, [])
        self.assertEqual(str(e), "median of no values")

    def test_ratio(self) -> None:
        self.assertEqual(common.ratio(7.0, 10.0), 0.7)
        self.assertEqual(common.ratio(1.0, 0.0), float("inf"))

    def test_percentile_nearest_rank(self) -> None:
        values = list(range(1, 101))
        self.assertEqual(common.percentile(values, 50), 50)
        self.assertEqual(common.percentile(values, 99), 99)
        self.assertEqual(common.percentile([3.0], 99), 3.0)


class TableTests(SynchronousTestCase):
    def test_figure_row_carries_ratio_and_verdict(self) -> None:
        row = common.figure("x", 7.0, 10.0, "req/s", ">= 0.70x", True)
        self.assertEqual((row["ratio"], row["met"]), (0.7, True))

    def test_table_has_header_and_one_line_per_row(self) -> None:
        text = common.table([common.figure("ingress", 700.0, 1000.0, "req/s", ">= 0.70x", True),
                             common.figure("latency", 2.5, 1.0, "ms", "<= 2x", False)])
        lines = text.splitlines()
        self.assertEqual(len(lines), 4)
        self.assertIn("| figure", lines[0])
        self.assertIn("| yes ", lines[2])
        self.assertIn("| NO ", lines[3])
        self.assertIn("0.700", lines[2])
