"""
The servers under load, each run as its own process:

  servers.py bare                      a bare twisted.web resource: reads the
                                       POST body, answers 202 with a small JSON
                                       body (no checks, no DB), default Site.
  servers.py ductile CONFIG [--pause-dispatch] [--profile FILE]
                                       a real ductile instance (DuctileService,
                                       as twistd runs it) from CONFIG.

Prints C{READY <port>} once listening; stops cleanly on SIGTERM/SIGINT.
C{--pause-dispatch} stops the instance's dispatcher after start, so accepted
jobs stay queued and the load measures ingress alone (see docs/performance.md).
C{--profile FILE} runs the whole reactor under cProfile and dumps the stats
to FILE at shutdown.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import reactor  # noqa: E402
from twisted.web import resource, server  # noqa: E402


class Bare(resource.Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        request.content.read()
        request.setResponseCode(202)
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"accepted","job_id":"00000000-0000-0000-0000-000000000000"}\n'


def ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def bare() -> None:
    port = reactor.listenTCP(0, server.Site(Bare()), interface="127.0.0.1")
    reactor.callWhenRunning(ready, port.getHost().port)
    reactor.run()


def ductile(config_dir: str, pause: bool, profile: str | None) -> None:
    from ductile.config import load_config
    from ductile.instance import build_instance
    from ductile.service import DuctileService

    svc = DuctileService(build_instance(load_config(config_dir)), reactor)

    def started(_: object) -> None:
        if pause:
            svc.dispatcher.stop()
        ready(svc.port.getHost().port)

    svc.started.addCallback(started)
    reactor.callWhenRunning(svc.startService)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: svc.stopService() if svc.running else None)
    if profile:
        profile_both(profile, svc)
    reactor.run()


def profile_both(path: str, svc) -> None:
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


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        bare()
    else:
        argv = sys.argv
        if "--switch-interval" in argv:  # experiment: GIL hand-off latency for the DB thread
            sys.setswitchinterval(float(argv[argv.index("--switch-interval") + 1]))
        ductile(argv[2], "--pause-dispatch" in argv, argv[argv.index("--profile") + 1] if "--profile" in argv else None)
