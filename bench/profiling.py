"""
cProfile for a running ductile instance.  cProfile sees one thread only, so
the reactor thread and the database thread are profiled separately.
"""
from __future__ import annotations

import pstats


def profile_service(path: str, svc, reactor) -> None:
    """
    cProfile the reactor thread (C{PATH.main}) and, separately, every
    group-commit transaction in the database thread (C{PATH.db}); the
    writer's batch statistics and the DB thread's busy time go to
    C{PATH.json}.  cProfile sees one thread only, hence the two profiles.
    """
    import cProfile
    import json
    import time

    from twisted.enterprise import adbapi

    import ductile.store.writer as writer

    main, db = cProfile.Profile(), cProfile.Profile()
    busy = [0.0]
    run_batch = writer._run_batch

    def profiled(txn, writes):
        t0 = time.perf_counter()
        db.enable()
        try:
            return run_batch(txn, writes)
        finally:
            db.disable()
            busy[0] += time.perf_counter() - t0

    writer._run_batch = profiled
    whole = [0.0, 0]
    run_interaction = adbapi.ConnectionPool._runInteraction

    def timed(self, *a, **kw):  # the body plus adbapi's COMMIT, in the DB thread
        t0 = time.perf_counter()
        try:
            return run_interaction(self, *a, **kw)
        finally:
            whole[0] += time.perf_counter() - t0
            whole[1] += 1

    adbapi.ConnectionPool._runInteraction = timed
    t_start = time.perf_counter()

    def dump() -> None:
        main.disable()
        main.dump_stats(path + ".main")
        db.dump_stats(path + ".db")
        stats = svc.queue._writer.stats if svc.queue else None
        with open(path + ".json", "w") as f:
            json.dump({"wall_s": time.perf_counter() - t_start, "db_batch_body_s": busy[0],
                       "db_interactions_s": whole[0], "interactions": whole[1],
                       "transactions": stats.transactions if stats else 0,
                       "writes": stats.writes if stats else 0,
                       "largest_batch": stats.largest_batch if stats else 0}, f)

    reactor.addSystemEventTrigger("before", "shutdown", dump)
    main.enable()


def summary(path: str, limit: int = 12) -> str:
    """The top functions by own time, as text."""
    import io

    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()

