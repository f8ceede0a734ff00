"""
Candidate library changes, applied as monkeypatches so their effect can be
measured before the library is changed (C{--experiment NAME} on servers.py,
fig_pipeline.py and fig_queue.py).  Never used by default.

The experiments measured so far (group-commit callbacks while busy, the
end-of-iteration flush, a sender pool sized to the workers) are now the
library's own behaviour.  The registry holds the dispatcher's prefetch depth
(C{prefetch-none}: claim only for free workers, as before prefetch;
C{prefetch-N}: N claimed ahead per worker); add the next candidate here as a
function and an entry in L{EXPERIMENTS}.
"""
from __future__ import annotations

from typing import Callable

def _prefetch(depth_per_worker: int) -> Callable[[], None]:
    """The dispatcher claims C{depth_per_worker} jobs ahead per worker (library: L{default_prefetch})."""

    def apply() -> None:
        import ductile.dispatch as dispatch

        init = dispatch.Dispatcher.__init__

        def patched(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            self.prefetch = self.max_workers * depth_per_worker

        dispatch.Dispatcher.__init__ = patched  # type: ignore[method-assign]

    return apply


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "prefetch-none": _prefetch(0),
    "prefetch-1": _prefetch(1),
    "prefetch-2": _prefetch(2),
    "prefetch-4": _prefetch(4),
    "prefetch-8": _prefetch(8),
}


def apply(argv: list[str]) -> None:
    """Apply every C{--experiment NAME} in C{argv}."""
    for i, arg in enumerate(argv):
        if arg == "--experiment":
            name = argv[i + 1]
            if name not in EXPERIMENTS:
                raise SystemExit(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS) or 'none'}")
            EXPERIMENTS[name]()
