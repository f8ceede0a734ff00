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
import signal
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


def stop_once_on_signals() -> None:
    """
    SIGINT (a terminal's Ctrl-C reaches the whole group) and SIGTERM (from
    the bench) both stop the reactor, once.  Installed after Twisted's own
    handlers (which stay for SIGCHLD).
    """
    stopping: list[bool] = []

    def on_signal(_signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(True)
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def bare() -> None:
    port = reactor.listenTCP(0, server.Site(Bare()), interface="127.0.0.1")
    reactor.callWhenRunning(stop_once_on_signals)
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
    reactor.callWhenRunning(stop_once_on_signals)
    reactor.callWhenRunning(svc.startService)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: svc.stopService() if svc.running else None)
    if profile:
        from profiling import profile_service

        profile_service(profile, svc, reactor)
    reactor.run()


if __name__ == "__main__":
    import experiments

    experiments.apply(sys.argv)
    if sys.argv[1] == "bare":
        bare()
    else:
        argv = sys.argv
        ductile(argv[2], "--pause-dispatch" in argv, argv[argv.index("--profile") + 1] if "--profile" in argv else None)
