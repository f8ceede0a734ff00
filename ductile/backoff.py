"""
Retry delays for plugin jobs (contract §4.3).
"""
from __future__ import annotations

from typing import Callable


def job_retry_delay(attempt: int, base: float, rng: Callable[[], float]) -> float:
    """
    C{base x 2^(attempt-1)} plus uniform jitter in C{[0, base/4]}, where
    C{attempt} is the attempt that just failed (1 for the first run).
    """
    return base * (2 ** max(0, attempt - 1)) + rng() * (base / 4)
