"""
Job execution against real plugin processes and a real queue file, with a
Clock for retry timing.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from ductile.config.models import Config, PluginConfig, RetryPolicy
from ductile.events import Event
from ductile.executor import JobExecutor, dispatch_to_spec
from ductile.pipelines import Router, compile_pipelines
from ductile.config.models import PipelineSource
from ductile.plugins.discovery import discover
from ductile.plugins.runner import ProcessRunner
from ductile.queue import JobSpec
from ductile.testing.db import make_queue
from ductile.testing.instance import read_records
from ductile.testing.plugins import write_recorder

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


class ExecutorTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "plugins")
        self.records = os.path.join(base, "records.jsonl")
        for name in ("flaky", "step-one", "step-two"):
            write_recorder(self.root, name)
        self.db_path = os.path.join(base, "state.db")
        os.makedirs(base, exist_ok=True)
        self.queue, self.pool, _ = make_queue(self, self.clock, path=self.db_path)

    def executor(self, **plugin_config: Any) -> JobExecutor:
        settings = {
            name: PluginConfig(name=name, config={"record_file": self.records, **cfg.get("config", {})},
                               retry=RetryPolicy(**cfg.get("retry", {})), timeouts=cfg.get("timeouts", {}))
            for name, cfg in plugin_config.items()
        }
        self.config = Config(config_file="/x/config.yaml", config_dir="/x", plugins=settings)
        found = discover([self.root, FIXTURES])
        pipelines = compile_pipelines(
            [PipelineSource({"name": "two-steps", "on": "go", "steps": [{"uses": "step-one"}, {"uses": "step-two"}]},
                            "pipelines.yaml", 0)],
            set(found.plugins),
        )
        self.router = Router(pipelines)
        runner = ProcessRunner(reactor, grace=0.5)
        self.addCleanup(runner.shutdown)
        return JobExecutor(self.clock, self.queue, self.config, found.plugins, runner, self.router,
                           rng=lambda: 0.5)

    async def run_next(self, executor: JobExecutor) -> dict[str, Any]:
        [job] = await self.queue.claim(1)
        await executor(job)
        return await self.queue.get_job(job.id)

    async def test_retry_delays_then_success(self) -> None:
        """
        Failed attempts are retried after base x 2^(attempt-1) + jitter
        (jitter = rng x base/4), and the job succeeds on its third attempt.
        """
        ex = self.executor(flaky={"config": {"fail_first": 2}, "retry": {"max_attempts": 4, "backoff_base": 10.0}})
        [r] = await self.queue.enqueue([JobSpec("flaky", "poll", max_attempts=4)])
        start = self.clock.seconds()
        job = await self.run_next(ex)
        self.assertEqual((job["status"], job["attempt"]), ("queued", 2))
        self.assertEqual(job["next_retry_at"], start + 10 + 1.25)
        self.assertEqual(job["last_error"], "failing run 1 on purpose")
        self.assertEqual(await self.queue.claim(1), [])
        self.clock.advance(11.25)
        job = await self.run_next(ex)
        self.assertEqual(job["next_retry_at"], self.clock.seconds() + 20 + 1.25)
        self.clock.advance(21.25)
        job = await self.run_next(ex)
        self.assertEqual((job["status"], job["attempt"], job["result"]), ("succeeded", 3, "flaky ran poll"))
        self.assertEqual(len(read_records(self.records)), 3)

    async def test_retries_exhausted(self) -> None:
        """Out of attempts, a retryable failure ends as failed with the last error."""
        ex = self.executor(flaky={"config": {"fail_first": 5}, "retry": {"backoff_base": 1.0}})
        await self.queue.enqueue([JobSpec("flaky", "poll", max_attempts=2)])
        await self.run_next(ex)
        self.clock.advance(10)
        job = await self.run_next(ex)
        self.assertEqual((job["status"], job["attempt"], job["last_error"]), ("failed", 2, "failing run 2 on purpose"))

    async def test_retry_false_and_exit_78_never_retry(self) -> None:
        """status:error with retry:false, and exit code 78, fail at once."""
        ex = self.executor(flaky={"config": {"fail": "permanent"}}, **{"echo-py": {}})
        await self.queue.enqueue([JobSpec("flaky", "poll", max_attempts=4)])
        job = await self.run_next(ex)
        self.assertEqual((job["status"], job["attempt"], job["last_error"]), ("failed", 1, "refused on purpose"))
        await self.queue.enqueue([JobSpec("echo-py", "poll", {"mode": "exit78"}, max_attempts=4)])
        job = await self.run_next(ex)
        self.assertEqual(job["status"], "failed")
        self.assertIn("78", job["last_error"])

    async def test_timeout_ends_timed_out(self) -> None:
        """A plugin past its command timeout is killed and the job ends timed_out."""
        ex = self.executor(**{"echo-py": {"timeouts": {"poll": 0.5}}})
        pidfile = os.path.abspath(self.mktemp())
        await self.queue.enqueue([JobSpec("echo-py", "poll", {"mode": "hang", "pidfile": pidfile}, max_attempts=1)])
        job = await self.run_next(ex)
        self.assertEqual(job["status"], "timed_out")
        self.assertIn("timed out", job["last_error"])

    async def test_unknown_plugin_fails_without_retry(self) -> None:
        """A job for a plugin that is not loaded fails at once, saying so."""
        ex = self.executor()
        await self.queue.enqueue([JobSpec("ghost", "poll", max_attempts=4)])
        job = await self.run_next(ex)
        self.assertEqual((job["status"], job["last_error"]), ("failed", "plugin 'ghost' is not loaded"))

    async def test_pipeline_survives_restart_between_steps(self) -> None:
        """
        A crash after step one committed (step two claimed but never
        finished) loses nothing: after recovery step two runs, and each step
        ran exactly once.
        """
        ex = self.executor(**{"step-one": {}, "step-two": {}})
        event = Event.create("go", {"n": 1}, "test", self.clock.seconds())
        specs = [dispatch_to_spec(d, self.config, submitted_by="test", source_event_id=event.event_id)
                 for d in self.router.route_root(event)]
        await self.queue.enqueue(specs)
        job = await self.run_next(ex)
        self.assertEqual(job["status"], "succeeded")
        [claimed] = await self.queue.claim(1)  # step two starts ... and the process dies.
        self.assertEqual(claimed.plugin, "step-two")
        await self.queue.started([claimed])
        self.pool.close()

        queue2, pool2, _ = make_queue(self, self.clock, path=self.db_path)
        self.queue = queue2
        [(job_id, plugin, status)] = await queue2.recover()
        self.assertEqual((job_id, plugin, status), (claimed.id, "step-two", "queued"))
        ex2 = self.executor(**{"step-one": {}, "step-two": {}})
        job = await self.run_next(ex2)
        self.assertEqual((job["plugin"], job["status"], job["attempt"]), ("step-two", "succeeded", 2))
        self.assertEqual([r["plugin"] for r in read_records(self.records)], ["step-one", "step-two"])
        self.assertEqual(await queue2.claim(5), [])


class CompletionRetryTests(TestCase):
    """A finished job's outcome survives a database that refuses writes for a while."""

    async def test_completion_retried_until_database_recovers(self) -> None:
        from ductile.errors import StorageUnavailable
        from ductile.queue import ClaimedJob, Completion

        clock = task.Clock()
        attempts: list[int] = []

        class FlakyQueue:
            async def _complete(self, job, completion):
                attempts.append(1)
                if len(attempts) < 3:
                    raise StorageUnavailable("database or disk is full")

            def complete(self, job, completion):
                from twisted.internet import defer

                return defer.ensureDeferred(self._complete(job, completion))

        config = Config(config_file="/x/c.yaml", config_dir="/x")
        ex = JobExecutor(clock, FlakyQueue(), config, {}, None, None)
        job = ClaimedJob("j", "p", "poll", {}, 1, 4, "", None, {}, None, None, None, None)
        d = defer_ensure(ex._finish(job, Completion("succeeded", result="r")))
        self.assertEqual(len(attempts), 1)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(len(attempts), 2)
        clock.advance(2)
        self.assertEqual(len(attempts), 3)
        self.successResultOf(d)


def defer_ensure(coro):
    from twisted.internet import defer

    return defer.ensureDeferred(coro)
