"""
C{reliability/run}: run the reliability scenarios against real twistd
processes on loopback and print a table of figures.  Exit status 0 when
every promise held, 1 when any was broken, 2 when the run itself failed.

See docs/reliability.md for what each scenario proves.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Sequence

from reliability.cluster import HarnessError, Registry
from reliability.scenarios import SCENARIOS, Options, Row

COLUMNS = ("test", "events sent", "accepted", "processed", "duplicates", "lost", "5xx", "crashes", "reruns", "seconds")


def table(rows: Sequence[Row]) -> str:
    cells = [COLUMNS] + [
        (r.test, str(r.sent), str(r.accepted), str(r.processed), str(r.duplicates), str(r.lost),
         str(r.server_errors), str(r.crashes), str(r.reruns), f"{r.seconds:.1f}")
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
                     + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reliability/run",
        description="Run the reliability scenarios against real twistd processes on loopback and print a "
                    "table of figures. Exit status 0 when every promise held, 1 when any was broken, 2 when "
                    "the run itself failed.",
    )
    parser.add_argument("--events", type=int, default=1000, help="events per relay stream (default 1000)")
    parser.add_argument("--requests", type=int, default=10000, help="requests in the abuse storm (default 10000)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeatable)")
    parser.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases)")
    parser.add_argument("--settle-timeout", type=float, default=300.0,
                        help="seconds a stream scenario may take to feed and settle (default 300)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.events > 100000:
        parser.error("--events must be between 1 and 100000")
    if args.requests < 20 or args.requests > 100000:
        parser.error("--requests must be between 20 and 100000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="ductile-reliability-")
    os.makedirs(workdir, exist_ok=True)
    options = Options(events=args.events, workdir=workdir, settle_timeout=args.settle_timeout,
                      abuse_requests=args.requests)
    registry = Registry(workdir)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, on_term)
    rows: list[Row] = []
    failed = False
    try:
        for name in args.only or list(SCENARIOS):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                row = SCENARIOS[name](options, registry)
            except HarnessError as e:
                row = Row(name, broken=[f"run failed: {e}"])
                failed = True
            except Exception:
                row = Row(name, broken=["run failed:\n" + traceback.format_exc()])
                failed = True
            finally:
                registry.cleanup()
            rows.append(row)
            state = "ok" if not row.broken else "BROKEN"
            print(f"  {name}: {state} in {row.seconds:.1f}s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopping every process this run started", file=sys.stderr)
        registry.cleanup()
        return 130
    finally:
        registry.cleanup()
        if args.keep or failed:
            print(f"scratch directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(table(rows))
    broken = [(r.test, b) for r in rows for b in r.broken]
    for r in rows:
        for note in r.notes:
            print(f"note: {r.test}: {note}")
    for test, text in broken:
        print(f"BROKEN: {test}: {text}")
    print(f"{len(rows)} scenarios, {len(broken)} broken promises, at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    if failed:
        return 2
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
