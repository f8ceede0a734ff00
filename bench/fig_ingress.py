"""
Relay ingress against a bare twisted.web resource, same signed 500 B POSTs
from the load generator (a separate process), interleaved rounds:

- throughput at 32 connections: ductile accepted (202, committed with
  synchronous=FULL) events/s vs bare answers/s;
- latency at 1 connection: p50 and p99.

The ductile instance runs with its dispatcher paused, so the figure is
ingress alone (the jobs stay queued); see docs/performance.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    HERE, compare, emit, install_cleanup, listening, log, python, run_json, spawn, stop, tempdir, wait_ready,
)
from instances import receiver_config  # noqa: E402


def load(port: int, connections: int, duration: float, ok: int = 202) -> dict:
    return run_json([python(), os.path.join(HERE, "loadgen.py"), "--port", str(port),
                     "--connections", str(connections), "--duration", str(duration), "--ok", str(ok)],
                    timeout=duration + 30)


def start_server(*args: str):
    proc = spawn([python(), os.path.join(HERE, "servers.py"), *args])
    return proc, int(wait_ready(proc))


def stop_server(proc, port: int) -> None:
    """Stop a server child and make sure nothing listens on its port any more."""
    stop(proc)
    if listening(port):
        raise SystemExit(f"something still listens on 127.0.0.1:{port} after stopping {proc.args!r}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--profile", help="only load ductile at 32 connections once, under cProfile; stats to PROFILE.*")
    p.add_argument("--once", action="store_true",
                   help="only load ductile at 32 connections once (no baseline), e.g. with a probe experiment")
    p.add_argument("--experiment", action="append", default=[], help="passed to the ductile server")
    args = p.parse_args()
    install_cleanup()
    base = tempdir("ductile-bench-ingress-")
    extra = ["--profile", args.profile] if args.profile else []
    for name in args.experiment:
        extra += ["--experiment", name]
    duct, duct_port = start_server("ductile", receiver_config(base), "--pause-dispatch", *extra)
    if args.profile or args.once:
        try:
            emit(load(duct_port, 32, args.duration))
        finally:
            stop_server(duct, duct_port)
            shutil.rmtree(base, ignore_errors=True)
        return
    bare, bare_port = start_server("bare")
    runs: dict[str, list[dict]] = {"bare32": [], "duct32": [], "bare1": [], "duct1": []}
    try:
        for r in range(args.rounds):
            runs["bare32"].append(load(bare_port, 32, args.duration))
            runs["duct32"].append(load(duct_port, 32, args.duration))
            runs["bare1"].append(load(bare_port, 1, args.duration))
            runs["duct1"].append(load(duct_port, 1, args.duration))
            log(f"ingress round {r + 1}: " + ", ".join(
                f"{k}={v[-1]['ok_rate']:.0f}/s p50={v[-1]['p50_ms']:.2f}ms" for k, v in runs.items()))
    finally:
        stop_server(duct, duct_port)
        stop_server(bare, bare_port)
        shutil.rmtree(base, ignore_errors=True)
    m = lambda key, field: median(x[field] for x in runs[key])  # noqa: E731
    for key, rs in runs.items():
        for x in rs:
            if set(x["statuses"]) != {"202"} or x["errors"]:
                raise SystemExit(f"{key}: unexpected answers {x['statuses']} errors={x['errors']}")
    gen_cpu = max(x["generator_cpu_s"] / x["seconds"] for rs in runs.values() for x in rs)
    col = lambda key, field: [x[field] for x in runs[key]]  # noqa: E731
    tput = compare("relay ingress events/s, 32 conns, 500 B, FULL", col("duct32", "ok_rate"),
                   col("bare32", "ok_rate"), "req/s", ">= 0.70x bare twisted.web", lambda r, v: r >= 0.70,
                   generator_max_core_share=gen_cpu)
    lat = compare("ingress latency p50, 1 conn", col("duct1", "p50_ms"), col("bare1", "p50_ms"), "ms",
                  "<= 2x bare and <= 1 ms", lambda r, v: r <= 2 and v <= 1.0)
    lat99 = compare("ingress latency p99, 1 conn", col("duct1", "p99_ms"), col("bare1", "p99_ms"), "ms",
                    "(reported)", lambda r, v: True)
    emit([tput, lat, lat99])


if __name__ == "__main__":
    main()
