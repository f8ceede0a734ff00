"""
Relay A -> B: events/s delivered by A's C{relay:} step and accepted by B,
against B's own ingress capacity (the load generator at 32 connections),
measured in interleaved rounds against the same B.

B is a real instance in its own process (dispatcher paused: ingress only).
A is a real instance in this process (C{max_workers: 32}, so up to 32
deliveries in flight like the generator's 32 connections); each round
enqueues as many root events as B's measured capacity would take in
C{--window} seconds and times until every relay job has succeeded.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer, task  # noqa: E402

import experiments  # noqa: E402
from common import compare, emit, install_cleanup, log, tempdir  # noqa: E402
from fig_ingress import stop_server, load, start_server  # noqa: E402
from fig_pipeline import pipeline_rate  # noqa: E402
from instances import receiver_config, sender_config  # noqa: E402

MAX_WORKERS = 32


async def main(reactor, args) -> None:
    from ductile.config import load_config
    from ductile.instance import build_instance
    from ductile.service import DuctileService

    base = tempdir("ductile-bench-relay-")
    b, b_port = start_server("ductile", receiver_config(base), "--pause-dispatch")
    a = DuctileService(build_instance(load_config(sender_config(base, b_port, MAX_WORKERS))), reactor)
    if args.profile:  # one A->B measurement of A under cProfile (B unprofiled)
        from profiling import profile_service

        profile_service(args.profile, a, reactor)
        args.rounds = 1
    caps: list[float] = []
    rates: list[float] = []
    try:
        a.startService()
        await a.started
        for r in range(args.rounds):
            # The generator is a blocking child; A's reactor is idle meanwhile.
            caps.append(load(b_port, 32, args.duration)["ok_rate"] if not args.profile else 2000.0)
            rates.append(await pipeline_rate(reactor, a, "bench.out", int(caps[-1] * args.window)))
            log(f"relay round {r + 1}: B capacity={caps[-1]:.0f}/s, A->B={rates[-1]:.0f}/s")
    finally:
        if a.running:
            await a.stopService()
        stop_server(b, b_port)
        shutil.rmtree(base, ignore_errors=True)
    emit([compare("relay A->B events/s delivered", rates, caps, "events/s", ">= 0.50x B's ingress capacity",
                  lambda r, v: r >= 0.5, a_max_workers=MAX_WORKERS)])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--profile", help="profile A (sender) during one A->B run; stats to PROFILE.*")
    p.add_argument("--experiment", action="append", default=[], help="applied to A (see bench/experiments.py)")
    args = p.parse_args()
    experiments.apply(sys.argv)
    install_cleanup()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
