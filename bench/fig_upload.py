"""
64 concurrent 10 MB uploads to the relay ingress of a real instance (own
process): every one must get 413 and the server's RSS (sampled every 10 ms
during the round) must grow by less than 20 MB over its RSS before the round.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HERE, emit, figure, install_cleanup, log, median, python, rss_kb, run_json, tempdir  # noqa: E402
from fig_ingress import stop_server, start_server  # noqa: E402
from instances import receiver_config  # noqa: E402

SIZE = 10 * 1024 * 1024
UPLOADS = 64


def sample_peak(pid: int, stop_flag: threading.Event, peak: list[int]) -> None:
    while not stop_flag.wait(0.01):
        try:
            peak[0] = max(peak[0], rss_kb(pid)["VmRSS"])
        except OSError:
            return


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    install_cleanup()
    base = tempdir("ductile-bench-upload-")
    server, port = start_server("ductile", receiver_config(base), "--pause-dispatch")
    growth: list[float] = []
    befores: list[float] = []
    statuses: list[dict] = []
    try:
        for r in range(args.rounds):
            before = rss_kb(server.pid)["VmRSS"]
            peak = [before]
            done = threading.Event()
            sampler = threading.Thread(target=sample_peak, args=(server.pid, done, peak))
            sampler.start()
            try:
                result = run_json([python(), os.path.join(HERE, "loadgen.py"), "--port", str(port),
                                   "--connections", str(UPLOADS), "--upload", str(SIZE), "--duration", "30"],
                                  timeout=60)
            finally:
                done.set()
                sampler.join()
            growth.append((peak[0] - before) / 1024)
            befores.append(before / 1024)
            statuses.append(result["statuses"])
            log(f"upload round {r + 1}: statuses={result['statuses']} RSS {before / 1024:.1f} MB "
                f"-> peak {peak[0] / 1024:.1f} MB in {result['seconds']:.2f}s")
    finally:
        stop_server(server, port)
        shutil.rmtree(base, ignore_errors=True)
    all_413 = all(s == {"413": UPLOADS} for s in statuses)
    emit([figure("64 concurrent 10 MB uploads: peak RSS growth", median(growth), median(befores), "MB",
                 "growth < 20 MB, all 413", max(growth) < 20 and all_413,
                 value_ratio=median(growth) / median(befores), max_growth_mb=max(growth),
                 all_413=all_413, statuses=statuses)])


if __name__ == "__main__":
    main()
