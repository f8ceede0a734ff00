"""
Enqueues made in one reactor iteration are written as one group
(L{ductile.store.writer.WriteGroup}): multi-row statements, with exactly the
per-job dedupe semantics, against a real SQLite file.
"""
from __future__ import annotations

import sqlite3

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ductile.jsoncopy import copy_json
from ductile.queue import Completion, JobSpec
from ductile.testing.db import make_queue


def _rows(path: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _recording(factory, statements: list[str]):
    """A transaction factory whose cursors record every statement they run."""

    class Recording:
        def __init__(self, transaction):
            self._transaction = transaction

        def __getattr__(self, name):
            return getattr(self._transaction, name)

        def execute(self, sql, *args):
            statements.append(sql)
            return self._transaction.execute(sql, *args)

        def executemany(self, sql, rows):
            rows = list(rows)
            statements.extend([sql] * len(rows))  # one step (one GIL round trip) per row
            return self._transaction.executemany(sql, rows)

    return lambda pool, connection: Recording(factory(pool, connection))


class BatchedEnqueueTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock, dedupe_ttl=3600)
        self.writer = self.queue._writer


    def _record_units(self) -> list[tuple[str, int]]:
        """Which way each batch unit ran: alone (one statement) or in a transaction."""
        from ductile.store import writer as writer_module

        runs: list[tuple[str, int]] = []
        real_run, real_alone = writer_module._Unit.run, writer_module._Unit.run_alone

        def run(unit, txn):
            runs.append(("transaction", len(unit.pending)))
            return real_run(unit, txn)

        def run_alone(unit, txn):
            result = real_alone(unit, txn)
            if result is not None:
                runs.append(("alone", len(unit.pending)))
            return result

        self.patch(writer_module._Unit, "run", run)
        self.patch(writer_module._Unit, "run_alone", run_alone)
        return runs

    async def test_one_iteration_is_one_statement(self) -> None:
        """
        Forty enqueues submitted in one reactor iteration are written as one
        statement (its own transaction, no BEGIN); each caller gets its own
        job, in submission order, with its context and its "enqueued"
        transition.
        """
        runs = self._record_units()
        statements: list[str] = []
        self.pool.transactionFactory = _recording(self.pool.transactionFactory, statements)
        ds = [
            self.queue.enqueue([JobSpec("p", "handle", {"i": i}, dedupe_key=f"k{i}", context={"n": i})])
            for i in range(40)
        ]
        results = await defer.gatherResults(ds)
        self.assertEqual(runs, [("alone", 40)])
        self.assertEqual(len(statements), 1)
        self.assertTrue(statements[0].startswith("INSERT INTO ductile_enqueue"), statements[0][:40])
        self.assertEqual(self.writer.stats.transactions, 1)
        ids = [r[0].job_id for r in results]
        self.assertEqual(len(set(ids)), 40)
        rows = _rows(self.path, "SELECT q.id, q.payload, c.accumulated_json, q.attempt, q.status FROM job_queue q "
                                "JOIN event_context c ON c.id=q.event_context_id ORDER BY q.rowid")
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual([r[1] for r in rows], [f'{{"i":{i}}}' for i in range(40)])
        self.assertEqual([r[2] for r in rows], [f'{{"n":{i}}}' for i in range(40)])
        self.assertEqual({(r[3], r[4]) for r in rows}, {(1, "queued")})
        self.assertEqual(
            _rows(self.path, "SELECT COUNT(*) FROM job_transitions WHERE to_status='queued' AND reason='enqueued'"),
            [(40,)],
        )

    async def test_too_many_for_one_statement(self) -> None:
        """
        A burst too big for one statement's parameters is written as one
        group inside a transaction, with the same dedupe.
        """
        runs = self._record_units()
        ds = [self.queue.enqueue([JobSpec("p", "handle", {"i": i}, dedupe_key=f"k{i % 100}")]) for i in range(150)]
        results = await defer.gatherResults(ds)
        self.assertEqual(runs, [("transaction", 150)])
        self.assertEqual(sum(1 for [r] in results if not r.deduplicated), 100)
        self.assertEqual([r.job_id for [r] in results[100:]], [r.job_id for [r] in results[:50]])
        self.assertEqual(_rows(self.path, "SELECT COUNT(*) FROM job_queue"), [(100,)])

    async def test_duplicates_inside_one_batch(self) -> None:
        """
        Two enqueues of the same (key, plugin, command) in one batch make one
        job: the later one is deduplicated to the earlier; another plugin or
        command with the same key is its own job.
        """
        ds = [
            self.queue.enqueue([JobSpec("p", "handle", {"n": 1}, dedupe_key="k")]),
            self.queue.enqueue([JobSpec("p", "handle", {"n": 2}, dedupe_key="k")]),
            self.queue.enqueue([JobSpec("q", "handle", dedupe_key="k")]),
            self.queue.enqueue([JobSpec("p", "poll", dedupe_key="k")]),
        ]
        [[a], [b], [c], [d]] = await defer.gatherResults(ds)
        self.assertEqual(self.writer.stats.transactions, 1)
        self.assertFalse(a.deduplicated)
        self.assertEqual((b.job_id, b.deduplicated), (a.job_id, True))
        self.assertEqual(len({a.job_id, c.job_id, d.job_id}), 3)
        self.assertEqual(_rows(self.path, "SELECT payload FROM job_queue WHERE plugin='p' AND command='handle'"),
                         [('{"n":1}',)])

    async def test_duplicates_of_stored_jobs(self) -> None:
        """
        In a batch, a key held by a queued job, or by one that succeeded
        within the window, is deduplicated to the oldest such job; a failed
        job or a success older than the window blocks nothing.
        """
        [old] = await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="done-old")])
        [job] = await self.queue.claim(1)
        await self.queue.complete(job, Completion("succeeded"))
        self.clock.advance(3000)
        [recent] = await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="done-recent")])
        [failed] = await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="failed")])
        for _ in range(2):
            [job] = await self.queue.claim(1)
            await self.queue.complete(job, Completion("succeeded" if job.id == recent.job_id else "failed",
                                                      error=None if job.id == recent.job_id else "boom"))
        [queued] = await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="queued")])
        self.clock.advance(601)  # "done-old" is now 3601 s old: outside the 3600 s window
        ds = [self.queue.enqueue([JobSpec("p", "handle", dedupe_key=key)])
              for key in ("done-old", "done-recent", "failed", "queued")]
        [[a], [b], [c], [d]] = await defer.gatherResults(ds)
        self.assertFalse(a.deduplicated)
        self.assertNotEqual(a.job_id, old.job_id)
        self.assertEqual((b.job_id, b.deduplicated), (recent.job_id, True))
        self.assertFalse(c.deduplicated)
        self.assertNotEqual(c.job_id, failed.job_id)
        self.assertEqual((d.job_id, d.deduplicated), (queued.job_id, True))

    async def test_successor_specs_keep_their_order_in_a_batch(self) -> None:
        """
        Specs that take the single-row path (pre-failed jobs) interleave with
        batched ones in submission order.
        """
        ds = [
            self.queue.enqueue([JobSpec("p", "handle", {"n": 1})]),
            self.queue.enqueue([JobSpec("p", "handle", {"n": 2}, error="bad step")]),
            self.queue.enqueue([JobSpec("p", "handle", {"n": 3})]),
        ]
        results = await defer.gatherResults(ds)
        rows = _rows(self.path, "SELECT id, status, payload FROM job_queue ORDER BY rowid")
        self.assertEqual([r[0] for r in rows], [r[0].job_id for r in results])
        self.assertEqual([r[1] for r in rows], ["queued", "failed", "queued"])

    async def test_a_failing_item_is_lost_alone(self) -> None:
        """
        When one item of a group makes the batch fail, the batch is rerun
        with every item alone: the others commit, only that caller fails.
        """
        ok = self.queue.enqueue([JobSpec("p", "handle", {"n": 1})])
        # A payload json.dumps cannot encode even with default=str.
        bad = self.queue.enqueue([JobSpec("p", "handle", {"n": float("nan")}), JobSpec("p", "handle", {1j: 1})])
        also_ok = self.queue.enqueue([JobSpec("p", "handle", {"n": 3})])
        self.assertTrue((await ok)[0].job_id)
        with self.assertRaises(TypeError):
            await bad
        self.assertTrue((await also_ok)[0].job_id)
        self.assertEqual(_rows(self.path, "SELECT payload FROM job_queue ORDER BY rowid"), [('{"n":1}',), ('{"n":3}',)])

    def test_dedupe_check_uses_the_dedupe_index(self) -> None:
        """
        The dedupe rule (the view's trigger and the single-job path run the
        same condition) is answered from the covering dedupe index, not by
        walking jobs through the status index, which grows with the queue.
        """
        from ductile.queue import _DUPLICATE

        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _DUPLICATE, ("k", "p", "c", 0.0)))
        self.assertIn("COVERING INDEX job_queue_dedupe", plan)


class CopyJsonTests(TestCase):
    def test_shares_no_container(self) -> None:
        original = {"a": [1, {"b": "c"}], "d": {"e": None}, "f": 1.5, "g": True}
        copied = copy_json(original)
        self.assertEqual(copied, original)
        copied["a"][1]["b"] = "changed"
        copied["d"]["e"] = 2
        self.assertEqual(original, {"a": [1, {"b": "c"}], "d": {"e": None}, "f": 1.5, "g": True})

    def test_tuples_become_lists(self) -> None:
        """As through a JSON round trip."""
        self.assertEqual(copy_json({"t": (1, {"x": 2})}), {"t": [1, {"x": 2}]})


class AloneStatementFailureTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock, dedupe_ttl=3600)

    async def test_failure_after_the_statement_is_not_rerun(self) -> None:
        """
        If finding the duplicates fails after the one statement committed,
        the callers get the storage error and nothing is written again by a
        rerun (a job without a dedupe key would otherwise be made twice).
        """
        from ductile.errors import StorageUnavailable

        await self.queue.enqueue([JobSpec("p", "handle", dedupe_key="dup")])

        def broken(txn, inserted):
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(self.queue, "_resolve_dropped", broken)
        ds = [self.queue.enqueue([JobSpec("p", "handle", dedupe_key="dup")]),
              self.queue.enqueue([JobSpec("p", "handle", {"plain": True})])]
        for d in ds:
            with self.assertRaises(StorageUnavailable):
                await d
        self.assertEqual(_rows(self.path, "SELECT COUNT(*) FROM job_queue WHERE payload='{\"plain\":true}'"),
                         [(1,)])


class ClaimStatementsTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock)

    async def test_claim_is_three_statements(self) -> None:
        """Claiming forty jobs is one read, one UPDATE and one multi-row transitions INSERT."""
        await self.queue.enqueue([JobSpec("p", "handle", {"n": i}) for i in range(40)])
        statements: list[str] = []
        self.pool.transactionFactory = _recording(self.pool.transactionFactory, statements)
        jobs = await self.queue.claim(40)
        self.assertEqual(len(jobs), 40)
        self.assertEqual([s.split()[0] for s in statements if s != "BEGIN IMMEDIATE"], ["SELECT", "UPDATE", "INSERT"])
        self.assertEqual(
            _rows(self.path, "SELECT count(*) FROM job_transitions WHERE from_status='queued' AND to_status='running' "
                             "AND reason='attempt 1'"), [(40,)])
