"""
Lifecycle hooks (C{on-hook} pipelines): which jobs fire them, the payload,
the depth cap, atomicity with the completion and crash recovery — against
a real SQLite queue and real plugin processes, and once end to end.
"""
from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor, task
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile import hooks
from ductile.config.models import Config, PipelineSource, PluginConfig, RetryPolicy, ServiceConfig
from ductile.events import Event
from ductile.executor import JobExecutor, dispatch_to_spec
from ductile.hooks import RecoveryHooks, reason_for, with_hooks
from ductile.pipelines import Router, compile_pipelines
from ductile.plugins.discovery import discover
from ductile.plugins.runner import ProcessRunner
from ductile.queue import Completion, JobSpec
from ductile.testing.db import make_queue
from ductile.testing.instance import port_of, read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder

from tests.test_config_loader import ConfigDirMixin

PLUGINS = ("worker", "notifier", "step-one", "looper")


def subset(payload: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The documented keys of a hook job's event payload (a pipeline step's
    payload also carries its context's C{ductile_*} keys)."""
    return {k: payload.get(k, "<missing>") for k in expected}


def pipelines(*specs: dict[str, Any]) -> list[PipelineSource]:
    return [PipelineSource(spec, "pipelines.yaml", i) for i, spec in enumerate(specs)]


ON_FAILED = {"name": "tell-me", "on-hook": "job.failed", "steps": [{"id": "notify", "uses": "notifier"}]}
ON_COMPLETED = {"name": "done", "on-hook": "job.completed", "steps": [{"id": "notify", "uses": "notifier"}]}
ON_TIMED_OUT = {"name": "slow", "on-hook": "job.timed_out", "steps": [{"id": "notify", "uses": "notifier"}]}
IN_PIPELINE = {"name": "flow", "on": "go", "steps": [{"id": "one", "uses": "worker"}]}


class HookExecutorTests(TestCase):
    """Root jobs run by the executor on a real queue file and real plugins."""

    timeout = 30

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "plugins")
        self.records = os.path.join(base, "records.jsonl")
        for name in PLUGINS:
            write_recorder(self.root, name)
        os.makedirs(base, exist_ok=True)
        self.queue, self.pool, _ = make_queue(self, self.clock, path=os.path.join(base, "state.db"))
        self.logged: list[dict[str, Any]] = []
        self.patch(hooks, "log", Logger(observer=self.logged.append))

    def executor(self, specs: list[dict[str, Any]], hook_max_depth: int = 4, **plugin_config: Any) -> JobExecutor:
        settings = {
            name: PluginConfig(
                name=name, config={"record_file": self.records, **cfg.get("config", {})},
                retry=RetryPolicy(**cfg.get("retry", {})), timeouts=cfg.get("timeouts", {}),
                notify_on_complete=cfg.get("notify", False),
            )
            for name, cfg in plugin_config.items()
        }
        self.config = Config(config_file="/x/config.yaml", config_dir="/x", plugins=settings,
                             service=ServiceConfig(hook_max_depth=hook_max_depth))
        found = discover([self.root])
        self.router = Router(compile_pipelines(pipelines(*specs), set(found.plugins)))
        runner = ProcessRunner(reactor, grace=0.5)
        self.addCleanup(runner.shutdown)
        return JobExecutor(self.clock, self.queue, self.config, found.plugins, runner, self.router,
                           rng=lambda: 0.5)

    async def run_next(self, executor: JobExecutor) -> dict[str, Any]:
        [job] = await self.queue.claim(1)
        await executor(job)
        return await self.queue.get_job(job.id)

    async def jobs(self) -> list[dict[str, Any]]:
        return list(reversed(await self.queue.list_jobs(limit=100)))

    async def test_failed_root_job_runs_the_job_failed_pipeline(self) -> None:
        """
        A failing root job of a notifying plugin creates the job.failed
        pipeline's job (submitted by "hook", child of the failed job), which
        the notifier then runs with the documented payload.
        """
        ex = self.executor([ON_FAILED, ON_COMPLETED], worker={"notify": True, "config": {"fail": "permanent"}},
                           notifier={})
        [r] = await self.queue.enqueue([JobSpec("worker", "poll", submitted_by="api", max_attempts=1)])
        failed = await self.run_next(ex)
        self.assertEqual(failed["status"], "failed")
        root, hook = await self.jobs()
        self.assertEqual(root["id"], r.job_id)
        self.assertEqual((hook["plugin"], hook["command"], hook["submitted_by"], hook["parent_job_id"]),
                         ("notifier", "handle", "hook", r.job_id))
        self.assertEqual((hook["pipeline"], hook["step_id"]), ("tell-me", "notify"))
        self.assertEqual(hook["payload"]["type"], "job.failed")
        self.assertEqual(hook["payload"]["source"], "worker")
        expected = {"job_id": r.job_id, "plugin": "worker", "command": "poll", "status": "failed",
                    "reason": "plugin_error", "error": "refused on purpose"}
        self.assertEqual(subset(hook["payload"]["payload"], expected), expected)
        notified = await self.run_next(ex)
        self.assertEqual(notified["status"], "succeeded")
        [_, line] = read_records(self.records)
        self.assertEqual(line["plugin"], "notifier")
        self.assertEqual(line["event"]["type"], "job.failed")
        self.assertEqual({k: line["event"]["payload"][k] for k in expected}, expected)
        self.assertEqual(line["context"]["ductile_hook_depth"], 1)
        self.assertEqual(await self.queue.claim(1), [])

    async def test_retry_fires_nothing_then_success_fires_completed(self) -> None:
        """A scheduled retry fires no hook; the attempt that succeeds fires job.completed with its result."""
        ex = self.executor([ON_FAILED, ON_COMPLETED], notifier={},
                           worker={"notify": True, "config": {"fail_first": 1},
                                   "retry": {"max_attempts": 2, "backoff_base": 10.0}})
        [r] = await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=2)])
        self.assertEqual((await self.run_next(ex))["status"], "queued")
        self.assertEqual(len(await self.jobs()), 1)
        self.clock.advance(20)
        self.assertEqual((await self.run_next(ex))["status"], "succeeded")
        [_, hook] = await self.jobs()
        self.assertEqual((hook["pipeline"], hook["payload"]["type"]), ("done", "job.completed"))
        expected = {"job_id": r.job_id, "plugin": "worker", "command": "poll", "status": "succeeded",
                    "result": "worker ran poll"}
        self.assertEqual(subset(hook["payload"]["payload"], expected), expected)

    async def test_timed_out_fires_job_timed_out(self) -> None:
        """A job killed by its timeout fires job.timed_out with reason "timeout"."""
        ex = self.executor([ON_FAILED, ON_TIMED_OUT], notifier={},
                           worker={"notify": True, "config": {"sleep": 30}, "timeouts": {"poll": 0.2}})
        [r] = await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=1)])
        self.assertEqual((await self.run_next(ex))["status"], "timed_out")
        [_, hook] = await self.jobs()
        self.assertEqual((hook["pipeline"], hook["payload"]["type"]), ("slow", "job.timed_out"))
        payload = hook["payload"]["payload"]
        self.assertEqual((payload["job_id"], payload["status"], payload["reason"]), (r.job_id, "timed_out", "timeout"))
        self.assertIn("timed out", payload["error"])

    async def test_job_inside_a_pipeline_fires_nothing(self) -> None:
        """A pipeline step's job is not a root job: its failure fires no hook even when its plugin notifies."""
        ex = self.executor([ON_FAILED, IN_PIPELINE], notifier={},
                           worker={"notify": True, "config": {"fail": "permanent"}})
        event = Event.create("go", {}, "test", self.clock.seconds())
        [dispatch] = self.router.route_root(event)
        await self.queue.enqueue([dispatch_to_spec(dispatch, self.config, submitted_by="test",
                                                   source_event_id=event.event_id)])
        self.assertEqual((await self.run_next(ex))["status"], "failed")
        self.assertEqual(len(await self.jobs()), 1)

    async def test_plugin_without_notify_fires_nothing(self) -> None:
        """notify_on_complete defaults to false: no hook job."""
        ex = self.executor([ON_FAILED, ON_COMPLETED], notifier={}, worker={"config": {"fail": "permanent"}})
        await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=1)])
        self.assertEqual((await self.run_next(ex))["status"], "failed")
        self.assertEqual(len(await self.jobs()), 1)

    async def test_hook_loop_stops_at_hook_max_depth(self) -> None:
        """
        A hook pipeline running a plugin that itself notifies loops: the
        chain stops once it is service.hook_max_depth hook jobs deep, with a
        warning naming the limit.
        """
        loop = {"name": "again", "on-hook": "job.completed", "steps": [{"uses": "looper"}]}
        ex = self.executor([loop], hook_max_depth=2, looper={"notify": True})
        [r] = await self.queue.enqueue([JobSpec("looper", "poll")])
        for _ in range(3):
            self.assertEqual((await self.run_next(ex))["status"], "succeeded")
        self.assertEqual(await self.queue.claim(1), [])
        root, first, second = await self.jobs()
        self.assertEqual((first["parent_job_id"], second["parent_job_id"]), (r.job_id, first["id"]))
        self.assertEqual([first["submitted_by"], second["submitted_by"]], ["hook", "hook"])
        [refused] = [e for e in self.logged if "refused" in e["log_format"]]
        self.assertEqual((refused["job_id"], refused["current_depth"], refused["max_depth"]), (second["id"], 2, 2))
        self.assertIn("hook enqueue refused: max depth reached", refused["log_format"])

    async def test_hook_routing_error_still_records_the_job(self) -> None:
        """A hook that cannot be routed is logged and dropped; the job's own end is recorded."""
        ex = self.executor([ON_FAILED], notifier={}, worker={"notify": True, "config": {"fail": "permanent"}})

        def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("router broke")

        self.patch(self.router, "route_hook", broken)
        await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=1)])
        self.assertEqual((await self.run_next(ex))["status"], "failed")
        self.assertEqual(len(await self.jobs()), 1)
        [error] = [e for e in self.logged if "log_failure" in e]
        self.assertIn("hook routing error", error["log_format"])
        self.assertEqual(str(error["log_failure"].value), "router broke")

    async def test_hook_job_commits_with_its_completion(self) -> None:
        """
        The hook job is written in the completion's transaction: when that
        transaction fails nothing of it remains (the job is still running,
        no hook job); when it commits, exactly one hook job exists.
        """
        self.executor([ON_FAILED], notifier={}, worker={"notify": True})
        await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=1)])
        [job] = await self.queue.claim(1)
        completion = with_hooks(job, Completion("failed", error="boom"), self.config, self.router,
                                self.clock.seconds())
        self.assertEqual(len(completion.successors), 1)

        def add_trigger(txn: Any) -> None:
            txn.execute("CREATE TRIGGER no_log BEFORE INSERT ON job_log BEGIN SELECT RAISE(ABORT, 'disk says no'); END")

        await self.pool.runInteraction(add_trigger)
        with self.assertRaises(Exception) as cm:
            await self.queue.complete(job, completion)
        self.assertIn("disk says no", str(cm.exception))
        [only] = await self.jobs()
        self.assertEqual(only["status"], "running")
        await self.pool.runInteraction(lambda txn: txn.execute("DROP TRIGGER no_log"))
        await self.queue.complete(job, completion)
        await self.queue.complete(job, completion)  # a second commit of the same completion adds nothing
        root, hook = await self.jobs()
        self.assertEqual((root["status"], hook["submitted_by"], hook["parent_job_id"]), ("failed", "hook", job.id))

    async def test_crash_recovery_dead_job_fires_job_failed(self) -> None:
        """
        A notifying root job that crash recovery makes dead fires job.failed
        (with recovery: true) in the recovery's own transaction; one it
        requeues fires nothing.
        """
        self.executor([ON_FAILED], notifier={}, worker={"notify": True})
        [dead] = await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=1)])
        [requeued] = await self.queue.enqueue([JobSpec("worker", "poll", max_attempts=3, dedupe_key="other")])
        # Started (not only claimed ahead): recovery counts the attempt.
        await self.queue.started(await self.queue.claim(2))
        recovered = await self.queue.recover(hooks=RecoveryHooks(self.config, self.router))
        self.assertEqual(sorted(s for _, _, s in recovered), ["dead", "queued"])
        hooks_made = [j for j in await self.jobs() if j["submitted_by"] == "hook"]
        [hook] = hooks_made
        self.assertEqual((hook["parent_job_id"], hook["pipeline"]), (dead.job_id, "tell-me"))
        expected = {
            "job_id": dead.job_id, "plugin": "worker", "command": "poll", "status": "dead",
            "error": "interrupted by a restart with no attempts left", "recovery": True,
        }
        self.assertEqual(subset(hook["payload"]["payload"], expected), expected)
        self.assertNotEqual(requeued.job_id, hook["parent_job_id"])

    async def test_recovered_hook_job_keeps_its_depth(self) -> None:
        """A dead hook job found by recovery counts its own depth (read from its context) against the cap."""
        loop = {"name": "again", "on-hook": "job.failed", "steps": [{"uses": "looper"}]}
        self.executor([loop], hook_max_depth=1, looper={"notify": True, "retry": {"max_attempts": 1}})
        event = Event.create("job.failed", {}, "looper", self.clock.seconds())
        [d] = self.router.route_hook(event, "looper", {hooks.HOOK_DEPTH: 1})
        spec = dispatch_to_spec(d, self.config, submitted_by="hook", source_event_id=event.event_id)
        await self.queue.enqueue([JobSpec("looper", "poll", max_attempts=1), spec])
        await self.queue.started(await self.queue.claim(2))
        await self.queue.recover(hooks=RecoveryHooks(self.config, self.router))
        jobs = await self.jobs()
        self.assertEqual(len(jobs), 3)  # the plain root fired one hook; the hook job at depth 1 fired none
        [refused] = [e for e in self.logged if "refused" in e["log_format"]]
        self.assertEqual((refused["current_depth"], refused["max_depth"]), (1, 1))


class RouteHookTests(SynchronousTestCase):
    """The router's side: which on-hook pipelines a signal starts."""

    def router(self, *specs: dict[str, Any]) -> Router:
        return Router(compile_pipelines(pipelines(*specs), {"worker", "other", "notifier"}))

    def test_from_plugin_if_and_signal_select_pipelines(self) -> None:
        r = self.router(
            {"name": "any", "on-hook": "job.failed", "steps": [{"uses": "notifier"}]},
            {"name": "only-other", "on-hook": "job.failed", "from_plugin": "other", "steps": [{"uses": "notifier"}]},
            {"name": "only-poll", "on-hook": "job.failed", "if": {"path": "payload.command", "op": "eq", "value": "poll"},
             "steps": [{"uses": "notifier"}]},
            {"name": "done", "on-hook": "job.completed", "steps": [{"uses": "notifier"}]},
        )
        event = Event.create("job.failed", {"command": "handle"}, "worker", 0.0)
        self.assertEqual([d.pipeline for d in r.route_hook(event, "worker")], ["any"])
        poll = Event.create("job.failed", {"command": "poll"}, "other", 0.0)
        self.assertEqual([d.pipeline for d in r.route_hook(poll, "other")], ["any", "only-other", "only-poll"])

    def test_an_emitted_event_named_like_a_signal_starts_no_hook_pipeline(self) -> None:
        """on-hook pipelines are reached only through route_hook, never by an event's type."""
        r = self.router({"name": "any", "on-hook": "job.failed", "steps": [{"uses": "notifier"}]})
        self.assertEqual(r.route_root(Event.create("job.failed", {}, "worker", 0.0)), [])

    def test_relay_step_carries_the_hook_payload(self) -> None:
        """A hook pipeline may relay the failure to another instance: the relayed payload is the hook payload."""
        r = Router(compile_pipelines(
            pipelines({"name": "forward", "on-hook": "job.failed",
                       "steps": [{"relay": {"to": "ops", "event": "ops.job-failed"}}]}),
            {"worker"}, {"ops"},
        ))
        payload = {"job_id": "j1", "plugin": "worker", "command": "poll", "status": "failed",
                   "reason": "plugin_error", "error": "boom"}
        [d] = r.route_hook(Event.create("job.failed", payload, "worker", 0.0), "worker", {hooks.HOOK_DEPTH: 1})
        assert d.relay is not None
        self.assertEqual((d.plugin, d.relay.to, d.relay.event_type, dict(d.relay.payload)),
                         ("core.relay", "ops", "ops.job-failed", payload))
        self.assertEqual(d.context[hooks.HOOK_DEPTH], 1)

    def test_reason_texts(self) -> None:
        self.assertEqual(reason_for("timed_out", "plugin timed out after 1s"), "timeout")
        self.assertEqual(reason_for("failed", "plugin exited with code 78 (EX_CONFIG, not retried): x"), "exit_code_78")
        self.assertEqual(reason_for("failed", "cannot run plugin: entrypoint not found: /x"), "spawn_error")
        self.assertEqual(reason_for("failed", "invalid plugin response: not JSON"), "nil_response")
        self.assertEqual(reason_for("failed", "refused"), "plugin_error")


class HookDocsTests(SynchronousTestCase):
    def test_operator_guide_example_compiles_and_routes(self) -> None:
        """The operator guide's on-hook example is valid and both pipelines take backup-runner's failures."""
        import yaml

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "operator-guide.md")
        with open(path) as f:
            text = f.read()
        section = text[text.index("## Getting told when a job fails"):]
        block = section[section.index("```yaml") + len("```yaml"):section.index("```", section.index("```yaml") + 7)]
        doc = yaml.safe_load(block.replace("${DISCORD_WEBHOOK}", "x"))
        self.assertTrue(doc["plugins"]["backup-runner"]["notify_on_complete"])
        r = Router(compile_pipelines(pipelines(*doc["pipelines"]), set(doc["plugins"]), {"lab"}))
        event = Event.create("job.failed", {"command": "poll"}, "backup-runner", 0.0)
        self.assertEqual([d.pipeline for d in r.route_hook(event, "backup-runner")],
                         ["tell-me-about-failures", "forward-failures"])
        self.assertEqual([d.pipeline for d in r.route_hook(event, "notify-discord")], ["forward-failures"])


class HookConfigTests(SynchronousTestCase, ConfigDirMixin):
    def test_values_parse_without_not_implemented_warnings(self) -> None:
        config = self.load(self.base_files(**{"config.yaml": (
            "service: {name: lab, hook_max_depth: 2}\nplugin_roots: [plugins]\n"
            "plugins: {worker: {notify_on_complete: true}, quiet: {}}\n")}))
        self.assertEqual(config.service.hook_max_depth, 2)
        self.assertTrue(config.plugins["worker"].notify_on_complete)
        self.assertFalse(config.plugins["quiet"].notify_on_complete)
        self.assertFalse([w for w in config.warnings if "notify_on_complete" in w or "hook_max_depth" in w])

    def test_defaults_and_zero(self) -> None:
        config = self.load(self.base_files())
        self.assertEqual(config.service.hook_max_depth, 4)
        zero = self.load({"config.yaml": "service: {hook_max_depth: 0}\nplugin_roots: [plugins]\n"})
        self.assertEqual(zero.service.hook_max_depth, 4)

    def test_bad_values_name_file_key_and_expectation(self) -> None:
        error = self.fails({"config.yaml": (
            "service: {hook_max_depth: -1}\nplugin_roots: [plugins]\n"
            "plugins: {worker: {notify_on_complete: sometimes}}\n")})
        self.assertProblem(error, "config.yaml: service.hook_max_depth", "-1", "expected a whole number >= 0")
        self.assertProblem(error, "config.yaml: plugins.worker.notify_on_complete", "sometimes",
                           "expected true or false")


class HookEndToEndTests(TestCase):
    """A real instance: an API-started job fails and the job.failed pipeline tells the notifier."""

    timeout = 30

    async def test_failure_notification(self) -> None:
        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "worker")
        write_recorder(plugins, "notifier")
        records = os.path.join(base, "records.jsonl")
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "hooks-test"},
            "plugin_roots": [plugins],
            "plugins": {
                "worker": {"notify_on_complete": True, "retry": {"max_attempts": 1},
                           "config": {"record_file": records, "fail": "permanent"}},
                "notifier": {"config": {"record_file": records}},
            },
            "api": {"enabled": True, "listen": "127.0.0.1:0",
                    "auth": {"tokens": [{"token": "tok", "scopes": ["*"]}]}},
            "pipelines": [ON_FAILED],
        }})
        service = await start_instance(self, cfg)
        response = await treq.post(f"http://127.0.0.1:{port_of(service)}/plugin/worker/poll", data=b"{}",
                                   headers={"Authorization": "Bearer tok"}, persistent=False)
        self.assertEqual(response.code, 202)
        job_id = json.loads(await response.content())["job_id"]

        async def settled() -> Any:
            # Reads the database first: wait_until needs a check that really waits.
            counts = await service.queue.counts()
            if counts.get("queued", 0) + counts.get("running", 0):
                return None
            return [r for r in read_records(records) if r["plugin"] == "notifier"]

        [line] = await wait_until(service, settled)
        self.assertEqual(line["event"]["type"], "job.failed")
        payload = line["event"]["payload"]
        self.assertEqual({k: payload[k] for k in ("job_id", "plugin", "command", "status", "reason", "error")},
                         {"job_id": job_id, "plugin": "worker", "command": "poll", "status": "failed",
                          "reason": "plugin_error", "error": "refused on purpose"})
        tree = await service.queue.job_tree(job_id)
        self.assertEqual([(j["plugin"], j["status"], j["submitted_by"]) for j in tree],
                         [("worker", "failed", "api"), ("notifier", "succeeded", "hook")])


class HookRecoveryAtStartTests(TestCase):
    """The service wires crash recovery to the hooks: a job left running by a crash tells the notifier."""

    timeout = 30

    async def test_job_dead_after_a_crash_fires_job_failed_at_start(self) -> None:
        import sqlite3

        from ductile.store.pool import prepare_database

        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "worker")
        write_recorder(plugins, "notifier")
        records = os.path.join(base, "records.jsonl")
        state = os.path.join(base, "state", "ductile.db")
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "hooks-recovery"},
            "state": {"path": state},
            "plugin_roots": [plugins],
            "plugins": {
                "worker": {"notify_on_complete": True, "config": {"record_file": records}},
                "notifier": {"config": {"record_file": records}},
            },
            "pipelines": [ON_FAILED],
        }})
        # What a crash leaves: the job's last attempt had started and never ended.
        prepare_database(state)
        conn = sqlite3.connect(state)
        conn.execute(
            "INSERT INTO job_queue (id, plugin, command, payload, status, attempt, max_attempts, submitted_by, "
            "created_at, started_at) VALUES ('crashed-job', 'worker', 'poll', '{}', 'running', 1, 1, 'api', 1, 2)"
        )
        conn.commit()
        conn.close()
        service = await start_instance(self, cfg)

        async def notified() -> Any:
            counts = await service.queue.counts()
            if counts.get("queued", 0) + counts.get("running", 0):
                return None
            return [r for r in read_records(records) if r["plugin"] == "notifier"]

        [line] = await wait_until(service, notified)
        self.assertEqual(line["event"]["type"], "job.failed")
        self.assertEqual(subset(line["event"]["payload"], {"job_id": "crashed-job", "status": "dead",
                                                            "recovery": True}),
                         {"job_id": "crashed-job", "status": "dead", "recovery": True})
