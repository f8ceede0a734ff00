"""
The dispatcher claims ahead of its workers (prefetch): a claimed job waits
for a worker holding no process, starts the moment one frees, and is never
counted as an attempt unless it started — over a real queue file.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ductile.dispatch import Dispatcher, default_prefetch
from ductile.queue import ClaimedJob, Completion, JobQueue, JobSpec
from ductile.testing.db import make_queue

OK = Completion("succeeded", result="ok")


class _Executor:
    """
    Holds each started job open until the test finishes it, and checks on
    every start that no cap is exceeded and no job runs twice at once.
    """

    def __init__(self, queue: JobQueue, max_workers: int, caps: dict[str, int]) -> None:
        self.queue = queue
        self.max_workers = max_workers
        self.caps = caps
        self.started: list[ClaimedJob] = []
        self.live: dict[str, ClaimedJob] = {}
        self.pending: dict[str, defer.Deferred[Any]] = {}
        self.violations: list[str] = []
        self.most_at_once = 0
        self._waiting: tuple[int, defer.Deferred[None]] | None = None

    def __call__(self, job: ClaimedJob) -> defer.Deferred[Any]:
        if job.id in self.live:
            self.violations.append(f"{job.id} started while already running")
        self.live[job.id] = job
        self.started.append(job)
        self.most_at_once = max(self.most_at_once, len(self.live))
        if len(self.live) > self.max_workers:
            self.violations.append(f"{len(self.live)} jobs running, max_workers {self.max_workers}")
        for plugin, cap in self.caps.items():
            n = sum(1 for j in self.live.values() if j.plugin == plugin)
            if n > cap:
                self.violations.append(f"{n} {plugin} jobs running, cap {cap}")
        keys = [(j.dedupe_key, j.plugin, j.command) for j in self.live.values() if j.dedupe_key]
        if len(keys) != len(set(keys)):
            self.violations.append(f"dedupe key running twice: {keys}")
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending[job.id] = d
        if self._waiting is not None and len(self.started) >= self._waiting[0]:
            _, w = self._waiting
            self._waiting = None
            w.callback(None)
        return d

    def until_started(self, n: int) -> defer.Deferred[None]:
        if len(self.started) >= n:
            return defer.succeed(None)
        w: defer.Deferred[None] = defer.Deferred()
        self._waiting = (n, w)
        return w

    def exit(self, job: ClaimedJob) -> None:
        """The job's process ends (the executor's runner calls queue.ending)."""
        del self.live[job.id]
        self.queue.ending(job)

    def finish(self, job: ClaimedJob, completion: Completion = OK) -> defer.Deferred[Any]:
        """Submit the outcome (as the real executor does) and end the job once it commits."""
        self.live.pop(job.id, None)
        d = self.queue.complete(job, completion)
        d.addCallback(lambda _: self.pending.pop(job.id).callback(None))
        return d


def _snapshot(path: str, dest: str) -> None:
    """What a crash right now would leave on disk: the committed state only."""
    src = sqlite3.connect(path)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def testcase_releases(testcase: TestCase, dispatcher: Dispatcher, executor: _Executor) -> None:
    """At cleanup: stop C{dispatcher}, then let every job still held by C{executor} end."""

    def release() -> defer.Deferred[None]:
        stopped = dispatcher.stop()
        for d in list(executor.pending.values()):
            d.callback(None)
        return stopped

    testcase.addCleanup(release)


class PrefetchTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock)
        self.caps = {"serial": 1}
        self.executor = _Executor(self.queue, 2, self.caps)
        # One claimed ahead per worker: small enough to see every state.
        self.dispatcher = Dispatcher(self.clock, self.queue, self.executor, 2, lambda: self.caps, prefetch=2)
        self.dispatcher.start()
        self.addCleanup(self._release)

    def _release(self) -> defer.Deferred[None]:
        stopped = self.dispatcher.stop()
        for d in list(self.executor.pending.values()):
            d.callback(None)
        return stopped

    async def _settle(self) -> None:
        """Let outstanding claims and start records commit (a no-op write is a barrier)."""
        for _ in range(3):
            await self.queue.started([])

    async def _rows(self) -> dict[int, tuple[str, int, Any]]:
        rows = await self.pool.runQuery("SELECT payload, status, attempt, started_at FROM job_queue")
        import json

        return {json.loads(p)["i"]: (s, a, st) for p, s, a, st in rows}

    async def test_claims_one_job_ahead_per_worker(self) -> None:
        """With 2 workers and 5 jobs, 2 run, 2 are claimed ahead (no started_at), 1 stays queued."""
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(5)])
        await self.executor.until_started(2)
        await self._settle()
        self.assertEqual([j.payload["i"] for j in self.executor.started], [0, 1])
        self.assertEqual([j.payload["i"] for j in self.dispatcher.claimed], [2, 3])
        rows = await self._rows()
        self.assertEqual([rows[i][0] for i in range(5)], ["running"] * 4 + ["queued"])
        self.assertIsNotNone(rows[0][2])
        self.assertIsNotNone(rows[1][2])
        self.assertIsNone(rows[2][2])
        self.assertIsNone(rows[3][2])

    async def test_next_job_starts_before_the_completion_commits(self) -> None:
        """
        A finishing job hands its worker to a claimed job at once: the next
        plugin starts inside complete(), with no commit in between.
        """
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(4)])
        await self.executor.until_started(2)
        await self._settle()
        self.assertEqual(len(self.dispatcher.claimed), 2)
        committed = self.executor.finish(self.executor.started[0])
        self.assertNoResult(committed)
        self.assertEqual([j.payload["i"] for j in self.executor.started], [0, 1, 2])
        await committed

    async def test_process_end_starts_the_next_job_without_a_write(self) -> None:
        """
        When a job's process ends (queue.ending), its worker starts the next
        claimed job at once; the refill claim waits for the completion, so
        nothing but the start record is submitted before it.
        """
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(6)])
        await self.executor.until_started(2)
        await self._settle()
        writes = self.queue.writer_stats.writes + len(self.queue._writer._pending)
        first = self.executor.started[0]
        self.executor.exit(first)
        self.assertEqual([j.payload["i"] for j in self.executor.started], [0, 1, 2])
        self.assertEqual(self.queue.writer_stats.writes + len(self.queue._writer._pending), writes + 1)
        self.assertFalse(self.dispatcher._claiming)
        # A second exit of the same job (and its completion) starts nothing more.
        self.queue.ending(first)
        await self.executor.finish(first)
        self.assertEqual(len(self.executor.started), 3)
        await self._settle()
        self.assertEqual(self.executor.violations, [])
        self.assertEqual(len(self.executor.live), 2)

    async def test_process_end_while_stopping_starts_nothing(self) -> None:
        """After stop(), a process ending does not start a claimed job."""
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(4)])
        await self.executor.until_started(2)
        await self._settle()
        stopped = self.dispatcher.stop()
        for job in list(self.executor.live.values()):
            self.executor.exit(job)
            await self.executor.finish(job)
        await stopped
        self.assertEqual(len(self.executor.started), 2)
        self.assertEqual(await self.queue.counts(), {"succeeded": 2, "queued": 2})

    async def test_start_not_recorded_still_runs(self) -> None:
        """
        When the start record cannot be written (storage unavailable), the
        job runs anyway and a warning names it; no error is logged.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        from ductile.errors import StorageUnavailable

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.patch(self.queue, "started", lambda jobs: defer.fail(StorageUnavailable("database or disk is full")))
        [r] = await self.queue.enqueue([JobSpec("p", "poll", {"i": 0})])
        await self.executor.until_started(1)
        self.assertIn(
            f"cannot record the start of job(s) {r.job_id}: database or disk is full",
            [formatEvent(e) for e in events],
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_started_counts_the_attempt_claimed_does_not(self) -> None:
        """
        After a crash, the running job (its start committed) is dead with
        max_attempts=1; the jobs claimed ahead of it go back as attempt 1.
        """
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}, max_attempts=1) for i in range(4)])
        await self.executor.until_started(2)
        await self._settle()
        crashed = os.path.join(os.path.dirname(self.path), "crashed.db")
        _snapshot(self.path, crashed)
        queue2, _, _ = make_queue(self, self.clock, path=crashed)
        recovered = {job_id: status for job_id, _, status in await queue2.recover()}
        started = {j.id for j in self.executor.started}
        claimed = {j.id for j in self.dispatcher.claimed}
        self.assertEqual(recovered, {**{i: "dead" for i in started}, **{i: "queued" for i in claimed}})
        for job_id in claimed:
            job = await queue2.get_job(job_id)
            self.assertEqual((job["status"], job["attempt"]), ("queued", 1))

    async def test_stop_releases_claimed_jobs(self) -> None:
        """stop() puts the jobs claimed ahead back as queued, same attempt, and starts nothing more."""
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}, max_attempts=1) for i in range(4)])
        await self.executor.until_started(2)
        await self._settle()
        claimed = self.dispatcher.claimed
        self.assertEqual(len(claimed), 2)
        stopped = self.dispatcher.stop()
        self.assertEqual(self.dispatcher.claimed, [])
        for job in list(self.executor.live.values()):
            await self.executor.finish(job)
        await stopped
        self.assertEqual(len(self.executor.started), 2)
        for job in claimed:
            row = await self.queue.get_job(job.id)
            self.assertEqual((row["status"], row["attempt"], row["started_at"]), ("queued", 1, None))
            transitions = await self.pool.runQuery(
                "SELECT to_status, reason FROM job_transitions WHERE job_id=? ORDER BY id", (job.id,))
            self.assertEqual(tuple(transitions[-1]), ("queued", "released: service stopping"))

    async def test_release_claimed_hands_back_ready_and_in_flight_claims(self) -> None:
        """
        A config reload hands back the jobs claimed ahead at once, and those
        of a claim still in flight when it returns; they are claimed again.
        """
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(4)])
        await self.executor.until_started(2)
        await self._settle()
        ahead = self.dispatcher.claimed
        self.assertEqual(len(ahead), 2)
        # Another job arrives; its claim is in flight when the reload comes.
        await self.queue.enqueue([JobSpec("p", "poll", {"i": 9})])
        in_flight = self.dispatcher._claim
        self.dispatcher.release_claimed()
        self.assertEqual(self.dispatcher.claimed, [])
        if in_flight is not None and not in_flight.called:
            await in_flight
        await self._settle()
        # Every job not started is queued again or claimed anew (under the
        # new generation); none was started and none lost.
        states = {r[0] for r in await self.pool.runQuery(
            "SELECT status FROM job_queue WHERE started_at IS NULL")}
        self.assertTrue(states <= {"queued", "running"}, states)
        self.assertEqual(len(self.executor.started), 2)
        released = await self.pool.runQuery(
            "SELECT COUNT(*) FROM job_transitions WHERE reason='released: service stopping'")
        self.assertGreaterEqual(released[0][0], 2)
        while len(self.executor.started) < 5:
            live, n = list(self.executor.live.values()), len(self.executor.started)
            for job in live:
                await self.executor.finish(job)
            await self.executor.until_started(min(5, n + len(live)))
        self.assertEqual(sorted(j.payload["i"] for j in self.executor.started), [0, 1, 2, 3, 9])
        self.assertEqual(self.executor.violations, [])

    async def test_plugin_cap_counts_only_started_jobs(self) -> None:
        """
        A plugin capped at 1 never runs two at once, though one more of it is
        claimed ahead; another plugin uses the free worker meanwhile.
        """
        await self.queue.enqueue([JobSpec("serial", "poll", {"i": i}) for i in range(3)]
                                 + [JobSpec("other", "poll", {"i": 10 + i}) for i in range(3)])
        await self.executor.until_started(2)
        await self._settle()
        self.assertEqual(sorted(j.plugin for j in self.executor.live.values()), ["other", "serial"])
        self.assertLessEqual(sum(1 for j in self.dispatcher.claimed if j.plugin == "serial"), 1)
        # Finish everything in an awkward order: always the "other" job first.
        while len(self.executor.started) < 6 or self.executor.live:
            live = sorted(self.executor.live.values(), key=lambda j: j.plugin != "other")
            if not live:
                await self.executor.until_started(len(self.executor.started) + 1)
                continue
            await self.executor.finish(live[0])
        self.assertEqual(self.executor.violations, [])
        self.assertEqual(sorted(j.payload["i"] for j in self.executor.started), [0, 1, 2, 10, 11, 12])
        serial = [j.payload["i"] for j in self.executor.started if j.plugin == "serial"]
        self.assertEqual(serial, [0, 1, 2])

    async def test_caps_hold_under_churn(self) -> None:
        """
        Thirty jobs, two thirds of them for the capped plugin, finished in varying orders: never more
        than max_workers running, never a capped plugin over its cap, every
        job run exactly once.
        """
        plugins = ["serial", "serial", "a"]
        await self.queue.enqueue([JobSpec(plugins[i % 3], "poll", {"i": i}) for i in range(30)])
        step = 0
        while len(self.executor.started) < 30 or self.executor.live:
            live = list(self.executor.live.values())
            if not live:
                await self.executor.until_started(len(self.executor.started) + 1)
                continue
            step += 1
            job = live[step % len(live)]
            if step % 2:
                self.executor.exit(job)  # the process ends first, then the outcome
            await self.executor.finish(job)
        self.assertEqual(self.executor.violations, [])
        self.assertEqual(self.executor.most_at_once, 2)
        self.assertEqual(sorted(j.payload["i"] for j in self.executor.started), list(range(30)))
        self.assertEqual(await self.queue.counts(), {"succeeded": 30})
        # The worker accounting is back to idle.
        self.assertEqual((self.dispatcher._busy_count, self.dispatcher._busy_by_plugin), (0, {}))
        self.assertEqual(self.dispatcher.running, [])

    async def test_dedupe_key_never_runs_twice(self) -> None:
        """
        Two queued jobs sharing a dedupe key (as after a replay) are never
        both running or claimed: the second waits until the first is done.
        """
        [a, b] = await self.queue.enqueue([JobSpec("p", "poll", {"i": 0}), JobSpec("p", "poll", {"i": 1})])
        stopped = self.dispatcher.stop()
        await self._settle()
        for job in list(self.executor.live.values()):
            await self.executor.finish(job)
        await stopped
        await self.pool.runOperation("UPDATE job_queue SET status='queued', dedupe_key='k', started_at=NULL")
        self.executor.started.clear()
        self.dispatcher.start()
        await self.executor.until_started(1)
        await self._settle()
        self.assertEqual(len(self.executor.live), 1)
        self.assertEqual(self.dispatcher.claimed, [])
        first = self.executor.started[0]
        await self.executor.finish(first)
        await self.executor.until_started(2)
        self.assertEqual(self.executor.violations, [])
        self.assertEqual({j.id for j in self.executor.started}, {a.job_id, b.job_id})

    async def test_no_prefetch(self) -> None:
        """prefetch=0 claims only for free workers."""
        await self.dispatcher.stop()
        dispatcher = Dispatcher(self.clock, self.queue, self.executor, 2, lambda: self.caps, prefetch=0)
        self.dispatcher = dispatcher
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(4)])
        dispatcher.start()
        await self.executor.until_started(2)
        await self._settle()
        self.assertEqual(dispatcher.claimed, [])
        self.assertEqual((await self.queue.counts()), {"running": 2, "queued": 2})


class DefaultPrefetchTests(TestCase):
    timeout = 10

    def test_default_prefetch(self) -> None:
        """Four ahead per worker for small pools, at most 16 unless there are more workers."""
        self.assertEqual([default_prefetch(n) for n in (1, 2, 4, 8, 32)], [4, 8, 16, 16, 32])

    async def test_capped_plugin_gets_its_share_of_the_prefetch(self) -> None:
        """
        With 2 workers and 8 ahead, a plugin capped at 1 has at most 1
        running and 4 claimed ahead; the rest of its jobs stay queued.
        """
        clock = task.Clock()
        queue, _, _ = make_queue(self, clock)
        caps = {"serial": 1}
        executor = _Executor(queue, 2, caps)
        dispatcher = Dispatcher(clock, queue, executor, 2, lambda: caps)
        self.assertEqual(dispatcher.prefetch, 8)
        dispatcher.start()
        testcase_releases(self, dispatcher, executor)
        await queue.enqueue([JobSpec("serial", "poll", {"i": i}) for i in range(10)])
        await executor.until_started(1)
        for _ in range(3):
            await queue.started([])
        self.assertEqual(len(executor.live), 1)
        self.assertEqual(len(dispatcher.claimed), 4)
        self.assertEqual(await queue.counts(), {"running": 5, "queued": 5})


class RefillTests(TestCase):
    timeout = 10

    async def test_refills_in_batches_while_all_workers_are_busy(self) -> None:
        """
        With every worker busy, the prefetch is refilled once half of it is
        used, in one claim, not one claim per finished job.
        """
        clock = task.Clock()
        queue, _, _ = make_queue(self, clock)
        executor = _Executor(queue, 2, {})
        dispatcher = Dispatcher(clock, queue, executor, 2, lambda: {})
        self.assertEqual(dispatcher.prefetch, 8)
        dispatcher.start()
        testcase_releases(self, dispatcher, executor)
        await queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(20)])
        await executor.until_started(2)
        for _ in range(3):
            await queue.started([])
        self.assertEqual(len(dispatcher.claimed), 8)
        claims = []
        claim = queue.claim
        self.patch(queue, "claim", lambda *a, **kw: (claims.append(a[0]), claim(*a, **kw))[1])
        for n in range(3):
            job = next(iter(executor.live.values()))
            executor.exit(job)
            await executor.finish(job)
            self.assertEqual(claims, [], f"claimed after {n + 1} finished")
        self.assertEqual(len(dispatcher.claimed), 5)
        job = next(iter(executor.live.values()))
        executor.exit(job)
        await executor.finish(job)
        self.assertEqual(claims, [4])
        for _ in range(3):
            await queue.started([])
        self.assertEqual(len(dispatcher.claimed), 8)
        self.assertEqual(len(executor.live), 2)

    async def test_idle_worker_claims_at_once(self) -> None:
        """A worker left idle (nothing claimed it can start) claims even a single job."""
        clock = task.Clock()
        queue, _, _ = make_queue(self, clock)
        executor = _Executor(queue, 2, {})
        dispatcher = Dispatcher(clock, queue, executor, 2, lambda: {})
        dispatcher.start()
        testcase_releases(self, dispatcher, executor)
        await queue.enqueue([JobSpec("p", "poll", {"i": 0})])
        await executor.until_started(1)
        await queue.enqueue([JobSpec("p", "poll", {"i": 1})])
        await executor.until_started(2)
        self.assertEqual(sorted(j.payload["i"] for j in executor.started), [0, 1])
