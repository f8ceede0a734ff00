"""
The job queue alone (L{ductile.queue.JobQueue} over its real SQLite file and its
group-commit writer):

- enqueue+claim cost with 100,000 queued jobs vs with 1,000: one enqueue of
  one job then one claim of one job, sequentially, µs per pair.  These two
  databases use synchronous=NORMAL: an fsync costs the same whatever the
  table size and, on a shared disk, its noise would hide the growth;
- group commit: enqueues/s with 32 outstanding vs awaiting each one (which
  is one transaction per enqueue), synchronous=FULL.
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
from common import compare, emit, log, tempdir  # noqa: E402

from ductile.queue import JobQueue, JobSpec  # noqa: E402
from ductile.store.pool import open_pool, prepare_database  # noqa: E402
from ductile.store.writer import GroupCommitWriter  # noqa: E402

PAYLOAD = {"type": "bench.event", "payload": {"data": "x" * 400}}
counter = [0]


def spec() -> JobSpec:
    counter[0] += 1
    return JobSpec(plugin="sh-ok", command="handle", payload=PAYLOAD, submitted_by="bench",
                   dedupe_key=f"bench:{counter[0]}")


def open_queue(reactor, path: str, synchronous: str) -> tuple[JobQueue, object]:
    prepare_database(path, synchronous)
    pool = open_pool(path, synchronous)
    return JobQueue(pool, GroupCommitWriter(pool), reactor), pool


async def fill(queue: JobQueue, n: int) -> None:
    while n > 0:
        k = min(n, 5000)
        await queue.enqueue([spec() for _ in range(k)])
        n -= k


async def pair_cost(queue: JobQueue, seconds: float) -> float:
    """µs per (enqueue one, claim one), sequential, for C{seconds}."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await queue.enqueue([spec()])
        await queue.claim(1, default_slots=1)
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


async def enqueue_rate(queue: JobQueue, seconds: float, outstanding: int) -> float:
    """Enqueues/s with C{outstanding} callers each awaiting its own enqueue."""
    n, deadline = [0], time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await queue.enqueue([spec()])
            n[0] += 1

    t0 = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(caller()) for _ in range(outstanding)])
    return n[0] / (time.perf_counter() - t0)


async def main(reactor, args) -> None:
    base = tempdir("ductile-bench-queue-")
    small, small_pool = open_queue(reactor, os.path.join(base, "small.db"), "normal")
    big, big_pool = open_queue(reactor, os.path.join(base, "big.db"), "normal")
    durable, durable_pool = open_queue(reactor, os.path.join(base, "durable.db"), "full")
    rows: dict[str, list[float]] = {"small": [], "big": [], "seq": [], "group": []}
    try:
        t0 = time.perf_counter()
        await fill(small, 1000)
        await fill(durable, 1000)
        await fill(big, args.big)
        log(f"queue: filled 1,000 and {args.big:,} jobs in {time.perf_counter() - t0:.1f}s")
        for r in range(args.rounds):
            rows["small"].append(await pair_cost(small, args.seconds))
            rows["big"].append(await pair_cost(big, args.seconds))
            rows["seq"].append(await enqueue_rate(durable, args.seconds, 1))
            rows["group"].append(await enqueue_rate(durable, args.seconds, 32))
            log(f"queue round {r + 1}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in rows.items()))
    finally:
        for pool in (small_pool, big_pool, durable_pool):
            pool.close()
        shutil.rmtree(base, ignore_errors=True)
    emit([
        compare(f"enqueue+claim with {args.big:,} queued (NORMAL)", rows["big"], rows["small"], "us/pair",
                "<= 1.2x same with 1,000 queued", lambda r, v: r <= 1.2),
        compare("enqueue/s, 32 outstanding (group commit, FULL)", rows["group"], rows["seq"], "jobs/s",
                "(issue 3) > 1x one txn per enqueue", lambda r, v: r > 1.0),
    ])

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--big", type=int, default=100_000)
    p.add_argument("--experiment", action="append", help="see bench/experiments.py")
    args = p.parse_args()
    experiments.apply(sys.argv)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
