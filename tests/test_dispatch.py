"""
The dispatcher over a real queue file, with executors controlled by the test.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ductile.dispatch import Dispatcher
from ductile.queue import ClaimedJob, Completion, JobQueue, JobSpec
from ductile.testing.db import make_queue


class _Executor:
    """Holds each started job's Deferred so the test decides when it ends."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.started: list[ClaimedJob] = []
        self.pending: dict[str, defer.Deferred[Any]] = {}
        self.wait_started: defer.Deferred[None] | None = None
        self.want = 0

    def __call__(self, job: ClaimedJob) -> defer.Deferred[Any]:
        self.started.append(job)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending[job.id] = d
        if self.wait_started is not None and len(self.started) >= self.want:
            w, self.wait_started = self.wait_started, None
            w.callback(None)
        return d

    def until_started(self, n: int) -> defer.Deferred[None]:
        self.want = n
        if len(self.started) >= n:
            return defer.succeed(None)
        self.wait_started = defer.Deferred()
        return self.wait_started

    async def finish(self, job: ClaimedJob, completion: Completion) -> None:
        await self.queue.complete(job, completion)
        self.pending.pop(job.id).callback(None)


class DispatcherTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock)
        self.executor = _Executor(self.queue)
        self.caps = {"serial": 1}
        self.dispatcher = Dispatcher(self.clock, self.queue, self.executor, 2, lambda: self.caps)
        self.dispatcher.start()
        self.addCleanup(self._release)

    def _release(self) -> defer.Deferred[None]:
        stopped = self.dispatcher.stop()
        for d in list(self.executor.pending.values()):
            d.callback(None)
        return stopped

    async def test_starts_on_enqueue(self) -> None:
        """An enqueue starts the job without any tick."""
        await self.queue.enqueue([JobSpec("p", "poll")])
        await self.executor.until_started(1)
        self.assertEqual(self.executor.started[0].plugin, "p")

    async def test_global_cap(self) -> None:
        """No more than max_workers jobs run at once; a finishing job frees a slot."""
        await self.queue.enqueue([JobSpec("p", "poll", {"i": i}) for i in range(3)])
        await self.executor.until_started(2)
        self.assertEqual(len(self.dispatcher.running), 2)
        await self.executor.finish(self.executor.started[0], Completion("succeeded", result="ok"))
        await self.executor.until_started(3)
        self.assertEqual([j.payload["i"] for j in self.executor.started], [0, 1, 2])

    async def test_plugin_cap(self) -> None:
        """A plugin capped at 1 runs serially while others use the free slot."""
        await self.queue.enqueue([JobSpec("serial", "poll"), JobSpec("serial", "poll"), JobSpec("other", "poll")])
        await self.executor.until_started(2)
        self.assertEqual(sorted(j.plugin for j in self.executor.started), ["other", "serial"])
        serial = [j for j in self.executor.started if j.plugin == "serial"][0]
        await self.executor.finish(serial, Completion("succeeded", result="ok"))
        await self.executor.until_started(3)
        self.assertEqual(self.executor.started[2].plugin, "serial")

    async def test_retry_timer(self) -> None:
        """A retry starts when the clock reaches its due time, not before."""
        await self.queue.enqueue([JobSpec("p", "poll")])
        await self.executor.until_started(1)
        job = self.executor.started[0]
        await self.executor.finish(job, Completion("queued", error="x", next_retry_at=self.clock.seconds() + 60))
        # Let the claim + next_due round trips settle.
        for _ in range(5):
            await self.queue.counts()
        self.clock.advance(59)
        await self.queue.counts()
        self.assertEqual(len(self.executor.started), 1)
        self.clock.advance(1)
        await self.executor.until_started(2)
        self.assertEqual(self.executor.started[1].attempt, 2)

    async def test_stop_waits_for_running(self) -> None:
        """stop() starts nothing new and fires once running jobs end."""
        await self.queue.enqueue([JobSpec("p", "poll")])
        await self.executor.until_started(1)
        stopped = self.dispatcher.stop()
        self.assertNoResult(stopped)
        await self.queue.enqueue([JobSpec("p", "poll")])
        await self.executor.finish(self.executor.started[0], Completion("succeeded", result="ok"))
        await stopped
        self.assertEqual(len(self.executor.started), 1)


class PluginCapsTests(TestCase):
    """Per-plugin parallelism caps as the service derives them (contract §2.8)."""

    def test_caps(self) -> None:
        import attrs

        from ductile.config.models import Config, PluginConfig, ServiceConfig
        from ductile.instance import Instance
        from ductile.service import DuctileService

        @attrs.frozen
        class P:
            concurrency_safe: bool

        config = Config(
            config_file="/x/c.yaml", config_dir="/x", service=ServiceConfig(max_workers=4),
            plugins={"raised": PluginConfig("raised", parallelism=3), "huge": PluginConfig("huge", parallelism=99)},
        )
        plugins = {"safe": P(True), "serial": P(False), "raised": P(False), "huge": P(True)}
        svc = DuctileService(Instance(config, plugins, (), None, None), reactor=None)
        caps = svc._plugin_caps()
        self.assertEqual(caps["safe"], 4)      # defaults to max_workers
        self.assertEqual(caps["serial"], 1)    # concurrency_safe: false runs serially...
        self.assertEqual(caps["raised"], 3)    # ...unless the operator raises it
        self.assertEqual(caps["huge"], 4)      # never above max_workers
        self.assertEqual(caps["core.relay"], 4)


class OneCommitPerJobTests(TestCase):
    timeout = 10

    async def test_next_claim_joins_the_completion(self) -> None:
        """
        With one worker, a job's completion and the claim of the next job are
        committed in one transaction, not two.
        """
        clock = task.Clock()
        queue, _, _ = make_queue(self, clock)
        executor = _Executor(queue)
        dispatcher = Dispatcher(clock, queue, executor, 1, lambda: {})
        dispatcher.start()
        self.addCleanup(dispatcher.stop)  # runs last: cleanups are LIFO
        self.addCleanup(lambda: [d.callback(None) for d in list(executor.pending.values())] and None)
        await queue.enqueue([JobSpec("p", "poll"), JobSpec("p", "poll")])
        await executor.until_started(1)
        stats = queue.writer_stats
        before = stats.transactions
        await executor.finish(executor.started[0], Completion("succeeded", result="ok"))
        await executor.until_started(2)
        self.assertEqual(stats.transactions - before, 1)
