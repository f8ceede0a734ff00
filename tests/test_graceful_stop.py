"""
A graceful stop loses no work and burns no attempts.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

import ductile.service
from ductile.queue import JobSpec
from ductile.store.pool import connect_blocking
from ductile.testing.instance import read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder


class GracefulStopTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "slow")
        self.records = os.path.join(base, "records.jsonl")
        self.cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "stopper"}, "plugin_roots": [plugins],
            "plugins": {"slow": {"config": {"record_file": self.records, "sleep": 1.0},
                                 "retry": {"max_attempts": 1}}},
        }})

    def _job(self, path: str, job_id: str) -> tuple[str, int]:
        conn = connect_blocking(path)
        try:
            return tuple(conn.execute("SELECT status, attempt FROM job_queue WHERE id=?", (job_id,)).fetchone())
        finally:
            conn.close()

    async def _start_with_spy(self) -> tuple[Any, defer.Deferred[Any]]:
        service = await start_instance(self, self.cfg)
        started: defer.Deferred[Any] = defer.Deferred()
        execute = service.dispatcher._execute

        def spy(job: Any) -> Any:
            if not started.called:
                started.callback(job)
            return execute(job)

        service.dispatcher._execute = spy
        return service, started

    async def test_running_job_finishes_within_grace(self) -> None:
        """A job running when the stop begins completes normally (its only attempt succeeds)."""
        service, started = await self._start_with_spy()
        [r] = await service.queue.enqueue([JobSpec("slow", "poll", max_attempts=1)])
        await started
        await service.stopService()
        self.assertEqual(self._job(service.config.state.path, r.job_id), ("succeeded", 1))

    async def test_interrupted_job_requeued_as_same_attempt(self) -> None:
        """
        Past the grace, running plugins are stopped and their jobs go back
        to the queue as the same attempt; after restart they run once.
        """
        self.patch(ductile.service, "SHUTDOWN_GRACE", 0.1)
        service, started = await self._start_with_spy()
        [r] = await service.queue.enqueue([JobSpec("slow", "poll", max_attempts=1)])
        await started
        await service.stopService()
        self.assertEqual(self._job(service.config.state.path, r.job_id), ("queued", 1))

        again = await start_instance(self, self.cfg)

        async def done() -> bool:
            return (await again.queue.get_job(r.job_id))["status"] == "succeeded"

        await wait_until(again, done)
        self.assertEqual((await again.queue.get_job(r.job_id))["attempt"], 1)

    async def test_claim_in_flight_at_stop_is_released(self) -> None:
        """A job claimed while the dispatcher stops is put back untouched, not started."""
        service = await start_instance(self, self.cfg)
        # The enqueue's commit submits a claim; the dispatcher stops before
        # that claim's transaction returns.
        [r] = await service.queue.enqueue([JobSpec("slow", "poll", max_attempts=1)])
        self.assertTrue(service.dispatcher._claiming)
        await service.dispatcher.stop()
        self.assertEqual((await service.queue.get_job(r.job_id))["status"], "queued")
        self.assertEqual(read_records(self.records), [])
        transitions = await service.pool.runQuery(
            "SELECT to_status, reason FROM job_transitions WHERE job_id=? ORDER BY id", (r.job_id,))
        self.assertEqual([tuple(t) for t in transitions][-1], ("queued", "released: service stopping"))
