"""
Candidate library changes, applied as monkeypatches so their effect can be
measured before the library is changed (C{--experiment NAME} on servers.py,
fig_pipeline.py and fig_queue.py).  Never used by default.

The experiments measured so far (group-commit callbacks while busy, the
end-of-iteration flush, a sender pool sized to the workers) are now the
library's own behaviour.  The registry holds two probes used to find where
the ingress time goes (C{db-timing}, C{no-enqueue-sql}) and the dispatcher's
prefetch depth (C{prefetch-none}: claim only for free workers, as before
prefetch; C{prefetch-N}: N claimed ahead per worker); add the next candidate
here as a function and an entry in L{EXPERIMENTS}.
"""
from __future__ import annotations

from typing import Callable



def db_timing() -> None:
    """
    Not a candidate change but a probe without cProfile's distortion: time
    the database thread's statements, batch bodies and whole interactions
    (body + COMMIT + hand-off) and write the totals to C{$DUCTILE_BENCH_TIMING}
    (default C{/tmp/ductile-db-timing.json}) when the server stops.  Showed
    that under ingress load a statement costs ~100 us in the service against
    ~10-25 us alone: the rest is winning the GIL back from the reactor thread.
    """
    import json
    import os
    import time

    from twisted.enterprise import adbapi
    from twisted.internet import reactor

    import ductile.store.writer as writer

    totals = {"batch_body_s": 0.0, "interactions_s": 0.0, "interactions": 0, "statements_s": 0.0, "statements": 0}
    run_batch = writer._run_batch

    class TimedCursor:
        def __init__(self, cursor):
            self._cursor = cursor

        def __getattr__(self, name):
            return getattr(self._cursor, name)

        def execute(self, *args):
            t0 = time.perf_counter()
            try:
                return self._cursor.execute(*args)
            finally:
                totals["statements_s"] += time.perf_counter() - t0
                totals["statements"] += 1

    def timed_batch(txn, units):
        t0 = time.perf_counter()
        cursor, txn._cursor = txn._cursor, TimedCursor(txn._cursor)
        try:
            return run_batch(txn, units)
        finally:
            txn._cursor = cursor
            totals["batch_body_s"] += time.perf_counter() - t0

    run_interaction = adbapi.ConnectionPool._runInteraction

    def timed_interaction(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return run_interaction(self, *a, **kw)
        finally:
            totals["interactions_s"] += time.perf_counter() - t0
            totals["interactions"] += 1

    writer._run_batch = timed_batch
    adbapi.ConnectionPool._runInteraction = timed_interaction
    started = time.perf_counter()

    def dump() -> None:
        totals["wall_s"] = time.perf_counter() - started
        totals["process_cpu_s"] = time.process_time()
        with open(os.environ.get("DUCTILE_BENCH_TIMING", "/tmp/ductile-db-timing.json"), "w") as f:
            json.dump(totals, f)

    reactor.addSystemEventTrigger("before", "shutdown", dump)


def no_enqueue_sql() -> None:
    """
    Not a candidate either: every enqueue commits an empty transaction
    instead of its rows, so the ingress figure shows the reactor thread's own
    ceiling (HTTP, checks, routing, answering) with the database out of it.
    """
    import ductile.queue as queue
    from ductile.events import new_id

    def nothing(self, txn, items):
        return [[queue.EnqueueResult(new_id()) for _ in specs] for specs, _ in items]

    queue.JobQueue._insert_batch = nothing
    queue.JobQueue._insert_alone = nothing


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
    "db-timing": db_timing,
    "no-enqueue-sql": no_enqueue_sql,
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
