"""
A delivered relay step routes its C{ductile.step.succeeded} only when that
can lead somewhere (a next step, or a pipeline it triggers); the common
pipeline whose last step is the relay builds and routes nothing.  Real
router, real queue file, a fake sender.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from ductile.config.models import Config, Instance, PipelineSource
from ductile.events import Event
from ductile.executor import STEP_SUCCEEDED, JobExecutor, dispatch_to_spec
from ductile.pipelines import Router, compile_pipelines
from ductile.queue import SUCCEEDED
from ductile.relay.outcome import DeliveryOutcome
from ductile.testing.db import make_queue


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def attempt(self, target: str, envelope: Any) -> defer.Deferred[DeliveryOutcome]:
        self.sent.append((target, envelope))
        return defer.succeed(DeliveryOutcome(
            "accepted", status=202, duration=0.01,
            acceptance={"status": "accepted", "job_id": "rj-1", "receiver_event_id": "re-1", "peer": "a"},
        ))


class _SpyRouter(Router):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_calls: list[Event] = []

    def route_next(self, event: Event, source_context: Any, source_plugin: str) -> Any:
        self.next_calls.append(event)
        return super().route_next(event, source_context, source_plugin)


class RelayStepRoutingTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, self.pool, self.path = make_queue(self, self.clock)
        self.config = Config(config_file="/x/config.yaml", config_dir="/x",
                             instances=(Instance(name="b", base_url="http://127.0.0.1:1", ingress_path="/relay",
                                                 secret_ref="s", secret="k"),))

    def _executor(self, *pipelines: dict[str, Any]) -> tuple[JobExecutor, _SpyRouter, _Sender]:
        compiled = compile_pipelines([PipelineSource(p, "pipelines.yaml", i) for i, p in enumerate(pipelines)],
                                     {"sink"}, {"b"})
        router = _SpyRouter(compiled)
        sender = _Sender()
        return JobExecutor(self.clock, self.queue, self.config, {}, None, router, sender=sender), router, sender

    async def _deliver(self, executor: JobExecutor, router: Router) -> list[dict[str, Any]]:
        """Start the pipelines C{go} triggers, run the relay job, return the jobs it left behind."""
        event = Event.create("go", {"n": 1}, "test", self.clock.seconds())
        specs = [dispatch_to_spec(d, self.config, submitted_by="test", source_event_id=event.event_id)
                 for d in router.route_root(event)]
        [created] = await self.queue.enqueue(specs)
        [job] = await self.queue.claim(1)
        self.assertEqual(job.id, created.job_id)
        await executor(job)
        self.assertEqual((await self.queue.get_job(job.id))["status"], SUCCEEDED)
        return [j for j in await self.queue.job_tree(job.id) if j["id"] != job.id]

    async def test_last_step_relay_routes_nothing(self) -> None:
        """A pipeline ending with its relay step: no step.succeeded event is built nor routed."""
        executor, router, sender = self._executor(
            {"name": "fwd", "on": "go", "steps": [{"relay": {"to": "b", "event": "x.y"}}]})
        created: list[Any] = []
        real_create = Event.create
        self.patch(Event, "create", lambda *a, **k: created.append(a) or real_create(*a, **k))
        left = await self._deliver(executor, router)
        self.assertEqual(len(sender.sent), 1)
        self.assertEqual((router.next_calls, [a for a in created if a[0] == STEP_SUCCEEDED], left), ([], [], []))

    async def test_next_step_after_relay_is_routed(self) -> None:
        """A step after the relay gets the step.succeeded event with the acceptance fields."""
        executor, router, _ = self._executor(
            {"name": "fwd", "on": "go", "steps": [{"id": "r", "relay": {"to": "b", "event": "x.y"}},
                                                  {"id": "after", "uses": "sink"}]})
        [after] = await self._deliver(executor, router)
        self.assertEqual([e.type for e in router.next_calls], [STEP_SUCCEEDED])
        self.assertEqual((after["plugin"], after["step_id"]), ("sink", "after"))
        self.assertEqual(after["payload"]["payload"]["relay_receiver_job_id"], "rj-1")

    async def test_pipeline_triggered_by_step_succeeded_is_routed(self) -> None:
        """A last-step relay still routes when some pipeline is triggered by ductile.step.succeeded."""
        executor, router, _ = self._executor(
            {"name": "fwd", "on": "go", "steps": [{"relay": {"to": "b", "event": "x.y"}}]},
            {"name": "watch", "on": STEP_SUCCEEDED, "steps": [{"uses": "sink"}]})
        [watcher] = await self._deliver(executor, router)
        self.assertEqual(len(router.next_calls), 1)
        self.assertEqual((watcher["plugin"], watcher["pipeline"]), ("sink", "watch"))

    async def test_one_info_line_per_delivery(self) -> None:
        """
        A delivered relay job logs one line, the executor's with both job
        ids; the sender logs no line for an accepted attempt, and an info
        line for every other outcome.
        """
        from ductile.relay.envelope import Envelope
        from ductile.relay.sender import RelaySender

        executor, router, _ = self._executor(
            {"name": "fwd", "on": "go", "steps": [{"relay": {"to": "b", "event": "x.y"}}]})
        lines: list[tuple[str, str]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("ductile"):
                lines.append((event["log_level"].name, formatEvent(event)))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await self._deliver(executor, router)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0][0], "info")
        self.assertRegex(lines[0][1],
                         r"^relay job \S+ delivered x\.y to b \(receiver job rj-1\)$")
        del lines[:]
        envelope = Envelope(event_type="x.y")
        RelaySender._log(None, "b", envelope, DeliveryOutcome("accepted", status=202))  # type: ignore[arg-type]
        RelaySender._log(None, "b", envelope,  # type: ignore[arg-type]
                         DeliveryOutcome("retryable", status=503, error="busy"))
        self.assertEqual(lines, [("info", "relay x.y to b: retryable (status 503) busy")])
