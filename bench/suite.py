"""
The whole benchmark suite (what C{bench/run} starts): each group of figures
runs in its own child process, one after the other; the table goes to
stdout and the same rows to JSON.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HERE, install_cleanup, listening, log, python, run_json, table, write_json  # noqa: E402

GENERATOR = ("load generator: bench/loadgen.py, our own Twisted HTTP/1.1 client signing every request "
             "(HMAC-SHA256, unique event id), run in a separate process from the server")


def groups(args: argparse.Namespace) -> list[tuple[str, list[str], float]]:
    r = ["--rounds", str(args.rounds)]
    d = ["--duration", str(args.duration)]
    return [
        ("ingress", ["fig_ingress.py", *r, *d], 60 + 4 * args.rounds * (args.duration + 3)),
        ("relay", ["fig_relay.py", *r, *d], 60 + args.rounds * (args.duration + 40)),
        ("pipeline", ["fig_pipeline.py", *r], 60 + args.rounds * 120),
        ("upload", ["fig_upload.py", *r], 60 + args.rounds * 40),
        ("queue", ["fig_queue.py", *r], 120 + args.rounds * 20),
    ]


def machine() -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    import sqlite3

    import twisted

    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg_at_start": load,
            "python": platform.python_version(), "twisted": twisted.__version__,
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform()}


def main() -> int:
    p = argparse.ArgumentParser(description="ductile benchmark suite (see docs/performance.md)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per figure; medians are reported (>= 3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of load per HTTP round")
    p.add_argument("--json", default=os.path.join(HERE, "results.json"), help="where to write the results")
    p.add_argument("--only", action="append", help="run only these groups (ingress, relay, pipeline, upload, queue)")
    args = p.parse_args()
    install_cleanup()
    info = machine()
    log(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_at_start']}")
    log(GENERATOR)
    rows, started, failures = [], time.time(), []
    for name, argv, timeout in groups(args):
        if args.only and name not in args.only:
            continue
        log(f"== {name}")
        t0 = time.time()
        try:
            rows += run_json([python(), os.path.join(HERE, argv[0]), *argv[1:]], timeout=timeout)
        except Exception as e:  # one broken group must not hide the others
            failures.append(f"{name}: {e}")
            log(f"!! {name} failed: {e}")
        log(f"   {name} took {time.time() - t0:.0f}s")
    print(table(rows))
    print(GENERATOR + ".")
    print("Every ratio compares figures measured in this run; values are medians of "
          f"{args.rounds} interleaved rounds.")
    for failure in failures:
        print("FAILED:", failure)
    write_json(args.json, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                           "seconds": time.time() - started, "machine": info, "generator": GENERATOR,
                           "rounds": args.rounds, "figures": rows, "failures": failures})
    print(f"results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
