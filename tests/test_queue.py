"""
The durable job queue against a real SQLite file.
"""
from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ductile.errors import StorageUnavailable
from ductile.queue import Completion, JobSpec
from ductile.store.pool import open_pool
from ductile.store.schema import MIGRATIONS, schema_version
from ductile.store.writer import GroupCommitWriter
from ductile.testing.db import make_queue


def _status(path: str, job_id: str) -> str | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT status FROM job_queue WHERE id=?", (job_id,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


class QueueTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock, dedupe_ttl=3600)

    async def test_schema_version(self) -> None:
        """The file is migrated to the latest schema version."""
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), len(MIGRATIONS))
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    async def test_enqueue_claim_fifo(self) -> None:
        """Jobs are claimed oldest first and move to running."""
        r1 = await self.queue.enqueue([JobSpec("p", "poll", {"n": 1})])
        self.clock.advance(1)
        r2 = await self.queue.enqueue([JobSpec("p", "poll", {"n": 2})])
        claimed = await self.queue.claim(1)
        self.assertEqual([c.id for c in claimed], [r1[0].job_id])
        self.assertEqual(claimed[0].payload, {"n": 1})
        self.assertEqual(_status(self.path, r1[0].job_id), "running")
        self.assertEqual(_status(self.path, r2[0].job_id), "queued")

    async def test_plugin_slots(self) -> None:
        """A plugin with no free slot is skipped; others are still claimed."""
        await self.queue.enqueue([JobSpec("busy", "poll"), JobSpec("free", "poll")])
        claimed = await self.queue.claim(5, {"busy": 0})
        self.assertEqual([c.plugin for c in claimed], ["free"])

    async def test_dedupe_outstanding_and_window(self) -> None:
        """
        A dedupe key is blocked by a queued job and by a success within the
        TTL, and free again after the TTL or after a failure.
        """
        first = (await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="k")]))[0]
        dup = (await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="k")]))[0]
        self.assertTrue(dup.deduplicated)
        self.assertEqual(dup.job_id, first.job_id)
        other_target = (await self.queue.enqueue([JobSpec("q", "handle", dedupe_key="k")]))[0]
        self.assertFalse(other_target.deduplicated)
        [job] = [j for j in await self.queue.claim(5) if j.plugin == "p"]
        await self.queue.complete(job, Completion("succeeded", result="ok"))
        self.clock.advance(3599)
        self.assertTrue((await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="k")]))[0].deduplicated)
        self.clock.advance(2)
        fresh = (await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="k")]))[0]
        self.assertFalse(fresh.deduplicated)
        [job] = [j for j in await self.queue.claim(5) if j.id == fresh.job_id]
        await self.queue.complete(job, Completion("failed", error="boom"))
        again = (await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="k")]))[0]
        self.assertFalse(again.deduplicated)

    async def test_retry_then_due(self) -> None:
        """A retry goes back to queued with attempt+1 and is not claimable before it is due."""
        [r] = await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        await self.queue.complete(job, Completion("queued", error="flaky", next_retry_at=self.clock.seconds() + 30))
        self.assertEqual(await self.queue.claim(1), [])
        self.assertEqual(await self.queue.next_due(), self.clock.seconds() + 30)
        self.clock.advance(30)
        self.assertIsNone(await self.queue.next_due())
        [again] = await self.queue.claim(1)
        self.assertEqual((again.id, again.attempt), (r.job_id, 2))

    async def test_completion_with_successors_is_atomic(self) -> None:
        """
        Completing a job creates its successors in the same transaction; a
        successor spec that fails to insert rolls back the completion too.
        """
        [r] = await self.queue.enqueue([JobSpec("p", "handle")])
        [job] = await self.queue.claim(1)
        bad = JobSpec(None, "handle")  # type: ignore[arg-type]  # violates NOT NULL
        with self.assertRaises(sqlite3.IntegrityError):
            await self.queue.complete(job, Completion("succeeded", result="r", successors=[bad]))
        self.assertEqual(_status(self.path, r.job_id), "running")
        results = await self.queue.complete(
            job, Completion("succeeded", result="r", successors=[JobSpec("q", "handle", source_event_id="e1")])
        )
        self.assertEqual(_status(self.path, r.job_id), "succeeded")
        self.assertEqual(_status(self.path, results[0].job_id), "queued")
        child = await self.queue.get_job(results[0].job_id)
        self.assertEqual(child["parent_job_id"], r.job_id)

    async def test_failed_spec_recorded_failed(self) -> None:
        """A spec carrying an error becomes a failed job with that error."""
        [r] = await self.queue.enqueue([JobSpec("p", "handle", error="with: payload.missing not found")])
        job = await self.queue.get_job(r.job_id)
        self.assertEqual((job["status"], job["last_error"]), ("failed", "with: payload.missing not found"))
        self.assertEqual(await self.queue.claim(5), [])

    async def test_crash_recovery(self) -> None:
        """Started jobs are requeued with the next attempt, or dead when out of attempts."""
        [a, b] = await self.queue.enqueue([JobSpec("p", "poll", max_attempts=4), JobSpec("q", "poll", max_attempts=1)])
        await self.queue.started(await self.queue.claim(5))
        recovered = await self.queue.recover()
        self.assertEqual(sorted(s for _, _, s in recovered), ["dead", "queued"])
        job_a = await self.queue.get_job(a.job_id)
        self.assertEqual((job_a["status"], job_a["attempt"]), ("queued", 2))
        self.assertEqual((await self.queue.get_job(b.job_id))["status"], "dead")

    async def test_claim_is_not_a_start(self) -> None:
        """A claimed job is running with no started_at until started() records its start."""
        [r] = await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        row = await self.queue.get_job(r.job_id)
        self.assertEqual((row["status"], row["started_at"]), ("running", None))
        self.clock.advance(5)
        await self.queue.started([job])
        self.assertEqual((await self.queue.get_job(r.job_id))["started_at"], self.clock.seconds())

    async def test_recovery_requeues_unstarted_claims_as_same_attempt(self) -> None:
        """
        A job claimed but never started goes back to queued as the same
        attempt, even with no attempts left; a started one beside it counts
        its attempt (and is dead with max_attempts=1).
        """
        [a, b, c] = await self.queue.enqueue([
            JobSpec("p", "poll", {"n": 1}, max_attempts=1),
            JobSpec("p", "poll", {"n": 2}, max_attempts=1),
            JobSpec("p", "poll", {"n": 3}, max_attempts=3),
        ])
        jobs = await self.queue.claim(5)
        self.assertEqual([j.payload["n"] for j in jobs], [1, 2, 3])
        await self.queue.started([jobs[0]])
        recovered = dict((job_id, status) for job_id, _, status in await self.queue.recover())
        self.assertEqual(recovered, {a.job_id: "dead", b.job_id: "queued", c.job_id: "queued"})
        job_b = await self.queue.get_job(b.job_id)
        job_c = await self.queue.get_job(c.job_id)
        self.assertEqual((job_b["status"], job_b["attempt"]), ("queued", 1))
        self.assertEqual((job_c["status"], job_c["attempt"]), ("queued", 1))
        transitions = await self.pool.runQuery(
            "SELECT from_status, to_status, reason FROM job_transitions WHERE job_id=? ORDER BY id", (b.job_id,))
        self.assertEqual(tuple(transitions[-1]), ("running", "queued", "crash recovery: claimed, never started"))
        # Claimable again, still as attempt 1 of 1.
        again = await self.queue.claim(5)
        self.assertEqual(sorted((j.payload["n"], j.attempt) for j in again), [(2, 1), (3, 1)])

    async def test_completion_of_a_job_no_longer_running_is_ignored(self) -> None:
        """
        A completion for an attempt that is no longer the running one (the
        job was released, or already completed) writes nothing and says so.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        [r] = await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        await self.queue.release([job])
        results = await self.queue.complete(
            job, Completion("succeeded", result="ok", successors=[JobSpec("q", "poll")]))
        self.assertEqual(results, [])
        row = await self.queue.get_job(r.job_id)
        self.assertEqual((row["status"], row["result"]), ("queued", None))
        self.assertEqual(await self.queue.counts(), {"queued": 1})
        logged = await self.pool.runQuery("SELECT COUNT(*) FROM job_log")
        self.assertEqual(logged[0][0], 0)
        self.assertIn(
            f"ignoring completion of job {r.job_id} attempt 1: it is no longer running",
            [formatEvent(e) for e in events],
        )
        # The same attempt completed twice: the second is ignored.
        [job] = await self.queue.claim(1)
        await self.queue.complete(job, Completion("succeeded", result="first"))
        await self.queue.complete(job, Completion("failed", error="second"))
        row = await self.queue.get_job(r.job_id)
        self.assertEqual((row["status"], row["result"], row["last_error"]), ("succeeded", "first", None))

    async def test_started_ignores_a_job_no_longer_running(self) -> None:
        """A late start record does not touch a job that was released or finished meanwhile."""
        [r] = await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        await self.queue.release([job])
        await self.queue.started([job])
        row = await self.queue.get_job(r.job_id)
        self.assertEqual((row["status"], row["started_at"]), ("queued", None))

    async def test_state_updates_shallow_merge(self) -> None:
        """state_updates merge shallowly into the plugin's state."""
        for updates in ({"a": 1, "b": {"x": 1}}, {"b": {"y": 2}}):
            await self.queue.enqueue([JobSpec("p", "poll")])
            [job] = await self.queue.claim(1)
            await self.queue.complete(job, Completion("succeeded", result="ok", state_updates=updates))
        self.assertEqual(await self.queue.plugin_state("p"), {"a": 1, "b": {"y": 2}})
        # The next claim carries the state, read in the claim's own transaction.
        await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        self.assertEqual(job.state, {"a": 1, "b": {"y": 2}})

    async def test_group_commit(self) -> None:
        """
        Many concurrent enqueues share transactions, and each caller's
        Deferred fires only when its own row is visible to another connection.
        """
        writer = self.queue._writer
        seen: list[str | None] = []

        def check(results):
            seen.append(_status(self.path, results[0].job_id))
            return results

        ds = [self.queue.enqueue([JobSpec("p", "poll", {"i": i})]).addCallback(check) for i in range(50)]
        await defer.gatherResults(ds)
        self.assertEqual(seen, ["queued"] * 50)
        self.assertLess(writer.stats.transactions, 50)
        self.assertGreater(writer.stats.largest_batch, 1)

    async def test_storage_unavailable(self) -> None:
        """A database that cannot be written fails writes with StorageUnavailable."""
        os.chmod(self.path, 0o444)
        self.addCleanup(os.chmod, self.path, 0o644)
        pool = open_pool(self.path)
        self.addCleanup(pool.close)
        queue2 = type(self.queue)(pool, GroupCommitWriter(pool), self.clock)
        if os.geteuid() == 0:
            # root ignores file modes; simulate with a query-only connection.
            await pool.runOperation("PRAGMA query_only=ON")
        with self.assertRaises(StorageUnavailable):
            await queue2.enqueue([JobSpec("p", "poll")])


class PruneTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock, dedupe_ttl=100)

    async def _finish(self, status: str) -> str:
        [r] = await self.queue.enqueue([JobSpec("p", "poll")])
        [job] = await self.queue.claim(1)
        await self.queue.complete(job, Completion(status, result="r", error=None if status == "succeeded" else "e"))
        return r.job_id

    async def test_retention(self) -> None:
        """
        Succeeded jobs go after the queue retention (never inside the dedupe
        window); failed ones and history only after the log retention.
        """
        ok = await self._finish("succeeded")
        dead = await self._finish("dead")
        self.clock.advance(60)
        self.assertEqual((await self.queue.prune(10, 1000))["jobs"], 0)  # dedupe window (100s) wins over 10s
        self.clock.advance(50)
        counts = await self.queue.prune(10, 1000)
        self.assertEqual(counts["jobs"], 1)
        self.assertIsNone(await self.queue.get_job(ok))
        self.assertIsNotNone(await self.queue.get_job(dead))
        self.clock.advance(1000)
        counts = await self.queue.prune(10, 1000)
        self.assertEqual(counts["jobs"], 1)
        self.assertGreater(counts["job_log"], 0)
        self.assertIsNone(await self.queue.get_job(dead))


class WriterTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.queue, self.pool, self.path = make_queue(self, self.clock)
        self.writer = self.queue._writer

    async def test_failing_write_rolls_back_alone(self) -> None:
        """In one batch, the write that raises is lost alone; the others commit."""
        def insert(name: str, fail: bool = False):
            def write(txn):
                txn.execute("INSERT INTO plugin_state (plugin_name, state, updated_at) VALUES (?, '{}', 0)", (name,))
                if fail:
                    raise ValueError("boom")
                return name
            return write

        # Submitted in one reactor iteration: all four share one transaction.
        hold = self.writer.submit(insert("first"))
        results = [self.writer.submit(insert("a")), self.writer.submit(insert("b", fail=True)),
                   self.writer.submit(insert("c"))]
        await hold
        self.assertEqual(await results[0], "a")
        with self.assertRaises(ValueError):
            await results[1]
        self.assertEqual(await results[2], "c")
        rows = await self.pool.runQuery("SELECT plugin_name FROM plugin_state ORDER BY plugin_name")
        self.assertEqual([r[0] for r in rows], ["a", "c", "first"])
        self.assertEqual((self.writer.stats.transactions, self.writer.stats.largest_batch), (1, 4))

    async def test_callbacks_submissions_join_the_next_batch(self) -> None:
        """
        Writes submitted from a caller's callback while others wait are
        committed together with them, not alone ahead of them.
        """
        from twisted.internet import defer

        first = self.writer.submit(lambda txn: 1)
        chained: list[defer.Deferred] = []
        first.addCallback(lambda _: chained.append(self.writer.submit(lambda txn: 2)))
        waiting = self.writer.submit(lambda txn: 3)
        await first
        await defer.gatherResults([waiting, chained[0]])
        self.assertEqual((self.writer.stats.transactions, self.writer.stats.largest_batch), (2, 2))


class NewIdTests(TestCase):
    def test_uuid4_shape_and_uniqueness(self) -> None:
        """Buffered ids are valid, distinct UUIDv4s, across buffer refills."""
        import uuid

        from ductile.events import new_id

        ids = [new_id() for _ in range(2000)]
        self.assertEqual(len(set(ids)), 2000)
        for text in ids[:50] + ids[-50:]:
            parsed = uuid.UUID(text)
            self.assertEqual((parsed.version, parsed.variant), (4, uuid.RFC_4122))
            self.assertEqual(str(parsed), text)
