"""
Failing reproductions of the broken promises found by the reliability work
(issue 10).  Deliberately NOT in the C{tests} package, so the committed suite
stays green; each test here passes once its finding is fixed, and can then
move to C{tests/}.  Run with:

    python -m twisted.trial reliability.pending.findings

(The module is not named test_*.py, so neither trial nor pytest collects it
by discovery.)
"""
from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.store.pool import connect_blocking
from ductile.testing.instance import start_instance, wait_until, write_config
from reliability.pending.gate import write_gate


class ReplayWithoutIdsTests(TestCase):
    """Finding 1: replay protection exists only through dedupe keys."""

    async def test_captured_request_without_ids_replayed_makes_no_second_job(self) -> None:
        from tests.test_reliability_abuse import PATH, Receiver, body_of, exchange, raw_request, signed

        receiver = Receiver(self)
        body = body_of(event_id=None)  # what `ductile relay send` sends without --origin-event-id
        captured = raw_request(PATH, signed(body), body)
        first = await exchange(receiver.port, captured)
        second = await exchange(receiver.port, captured)
        self.assertEqual((first.status, second.status), (202, 202))
        self.assertEqual(len(receiver.job_rows()), 1)


class SlowClientTests(SynchronousTestCase):
    """Finding 2: no absolute deadline for a request's headers and body."""

    def test_trickled_headers_cut_off(self) -> None:
        from reliability.slow_client import trickle

        cut, elapsed = trickle("headers", interval=20, duration=600)
        self.assertTrue(cut, f"still connected after {elapsed}s")

    def test_trickled_body_cut_off(self) -> None:
        from reliability.slow_client import trickle

        cut, elapsed = trickle("body", interval=20, duration=600)
        self.assertTrue(cut, f"still connected after {elapsed}s")


class GateInstance:
    def __init__(self, testcase: TestCase) -> None:
        base = os.path.abspath(testcase.mktemp())
        plugins = os.path.join(base, "plugins")
        write_gate(plugins)
        self.started = os.path.join(base, "started")
        self.gate = os.path.join(base, "gate-open")
        self.config_dir = write_config(os.path.join(base, "inst"), {"config.yaml": {
            "service": {"name": "inst"},
            "plugin_roots": [plugins],
            "plugins": {"gate": {"config": {"started_file": self.started, "gate_file": self.gate},
                                 "retry": {"max_attempts": 1}}},
            "api": {"enabled": True, "listen": "127.0.0.1:0",
                    "auth": {"tokens": [{"token": "pending-token", "scopes": ["*"]}]}},
            "state": {"path": "./data/state.db"},
        }})

    def open_gate(self) -> None:
        open(self.gate, "w").close()

    async def wait_started(self) -> None:
        for _ in range(500):
            if os.path.exists(self.started):
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("the gate plugin never started")


class CompletionStorageTests(TestCase):
    """
    Finding 3: a job whose completion cannot be written (database locked or
    read-only for a moment) stays 'running' until the next restart.
    """

    timeout = 30

    async def test_job_completes_after_transient_storage_failure(self) -> None:
        from ductile.queue import JobSpec

        inst = GateInstance(self)
        service = await start_instance(self, inst.config_dir, environ={})
        [result] = await service.queue.enqueue([JobSpec("gate", "handle", {"type": "x", "payload": {}})])
        await inst.wait_started()
        await service.pool.runOperation("PRAGMA query_only=ON")
        inst.open_gate()
        await task.deferLater(reactor, 1.0, lambda: None)  # the plugin answers; its completion fails
        await service.pool.runOperation("PRAGMA query_only=OFF")

        async def finished() -> Any:
            job = await service.queue.get_job(result.job_id)
            return job if job["status"] != "running" else None

        job = await wait_until(service, finished, timeout=10)
        self.assertEqual(job["status"], "succeeded")


class GracefulStopTests(TestCase):
    """
    Finding 4: a graceful stop SIGTERMs running plugins at once, failing their
    attempt (a max_attempts=1 job ends failed) instead of letting them finish.
    """

    timeout = 30

    async def test_running_plugin_finishes_on_graceful_stop(self) -> None:
        from ductile.queue import JobSpec

        inst = GateInstance(self)
        service = await start_instance(self, inst.config_dir, environ={})
        [result] = await service.queue.enqueue(
            [JobSpec("gate", "handle", {"type": "x", "payload": {}}, max_attempts=1)])
        await inst.wait_started()
        opener = reactor.callLater(0.3, inst.open_gate)
        self.addCleanup(lambda: opener.cancel() if opener.active() else None)
        path = service.config.state.path
        await service.stopService()
        conn = connect_blocking(path)
        try:
            status = conn.execute("SELECT status FROM job_queue WHERE id=?", (result.job_id,)).fetchone()[0]
        finally:
            conn.close()
        self.assertEqual(status, "succeeded")
