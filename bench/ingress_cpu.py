"""
The reactor thread's CPU per relay request, in process and without sockets:
the real ingress site (API tree, relay resource, L{DuctileSite}) and the bare
resource each parse and answer the same signed requests fed straight into
their HTTP channel.  The job queue is a stub that accepts at once, so this
is the ingress's own Python — the part the load generator figure cannot
separate from the database thread and the loopback sockets.  A probe for
making the ingress cheaper, not one of the issue's figures.

    PYTHONPATH=. python bench/ingress_cpu.py [--requests N] [--profile FILE]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import address, defer  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.web import server  # noqa: E402

from instances import PEER, SECRET, receiver_config  # noqa: E402
from loadgen import Requests  # noqa: E402
from servers import Bare  # noqa: E402

from ductile.config import load_config  # noqa: E402
from ductile.events import new_id  # noqa: E402
from ductile.instance import build_instance  # noqa: E402
from ductile.queue import EnqueueResult  # noqa: E402
from ductile.relay.acceptor import RelayAcceptor  # noqa: E402
from ductile.relay.ingress import ingress_body_limit_for, mount_remote_ingress  # noqa: E402
from ductile.relay.stats import IngressStats  # noqa: E402
from ductile.web.api import Api  # noqa: E402
from ductile.web.limits import DuctileSite  # noqa: E402

PATH = f"/ingest/peer/{PEER}"


class AcceptingQueue:
    """Stands in for the job queue: every enqueue is durable at once."""

    def enqueue(self, specs):
        return defer.succeed([EnqueueResult(new_id()) for _ in specs])


def ductile_site(config_dir: str, clock) -> server.Site:
    instance = build_instance(load_config(config_dir))
    cfg = instance.config
    stats = IngressStats()
    root = Api(clock, cfg, AcceptingQueue(), instance.plugins, instance.router, ingress_stats=stats).resource()
    mount_remote_ingress(root, cfg.remote_ingress, RelayAcceptor(cfg, instance.router, AcceptingQueue()),
                         clock, stats)
    return DuctileSite(root, body_limit_for=ingress_body_limit_for(cfg.remote_ingress, cfg.api.max_body_size, stats),
                       reactor=clock, read_deadline=cfg.api.read_timeout, max_connections=cfg.api.max_connections)


def per_request_us(site: server.Site, requests: list[bytes], expect: bytes) -> float:
    channel = site.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000),
                                hostAddress=address.IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    t0 = time.perf_counter()
    for raw in requests:
        channel.dataReceived(raw)
    elapsed = time.perf_counter() - t0
    answers = transport.value().count(expect)
    if answers != len(requests):
        raise SystemExit(f"{answers} of {len(requests)} requests answered {expect!r}: {transport.value()[-300:]!r}")
    channel.connectionLost(None)
    return elapsed / len(requests) * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", help="cProfile the ductile rounds; stats to PROFILE")
    p.add_argument("--log", choices=("none", "text", "json"), default="none",
                   help="also write every log event to /dev/null as twistd would (text) or with --logger json")
    args = p.parse_args()
    if args.log != "none":
        from twisted.logger import globalLogBeginner, jsonFileLogObserver, textFileLogObserver

        sink = open(os.devnull, "w")
        observer = textFileLogObserver(sink) if args.log == "text" else jsonFileLogObserver(sink, recordSeparator="")
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    base = tempfile.mkdtemp(prefix="ductile-ingress-cpu-")
    try:
        clock = MemoryReactorClock()
        clock.advance(time.time())
        duct = ductile_site(receiver_config(base), clock)
        bare = server.Site(Bare())
        gen = Requests(PATH, PEER, SECRET, 500)
        rows = []
        for _ in range(args.rounds):
            requests = [gen.next() for _ in range(args.requests)]
            b = per_request_us(bare, requests, b" 202 ")
            if args.profile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            d = per_request_us(duct, requests, b" 202 ")
            if args.profile:
                prof.disable()
                prof.dump_stats(args.profile)
            rows.append((b, d))
            print(f"bare {b:6.1f} us/request   ductile {d:6.1f} us/request   ratio {b / d:.3f}", flush=True)
        rows.sort(key=lambda r: r[0] / r[1])
        b, d = rows[len(rows) // 2]
        print(f"median round: bare {b:.1f} us, ductile {d:.1f} us, bare/ductile {b / d:.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
