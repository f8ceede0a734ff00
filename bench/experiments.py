"""
Candidate library changes, applied as monkeypatches so their effect can be
measured before the library is changed (C{--experiment NAME} on servers.py,
fig_pipeline.py and fig_queue.py).  Never used by default.

The experiments measured so far (group-commit callbacks while busy, the
end-of-iteration flush, a sender pool sized to the workers) are now the
library's own behaviour, so the registry is empty; add the next candidate
here as a function and an entry in L{EXPERIMENTS}.
"""
from __future__ import annotations

from typing import Callable

EXPERIMENTS: dict[str, Callable[[], None]] = {}


def apply(argv: list[str]) -> None:
    """Apply every C{--experiment NAME} in C{argv}."""
    for i, arg in enumerate(argv):
        if arg == "--experiment":
            name = argv[i + 1]
            if name not in EXPERIMENTS:
                raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS) or 'none'}")
            EXPERIMENTS[name]()
