"""
Schedules driven by a Clock over a real queue file.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import TestCase

from ductile.config.models import Config, PluginConfig, Schedule, ServiceConfig
from ductile.queue import Completion
from ductile.scheduler import Scheduler
from ductile.testing.db import make_queue


class _Plugin:
    concurrency_safe = True


def _config(**schedule: Any) -> Config:
    return Config(
        config_file="/x/config.yaml",
        config_dir="/x",
        service=ServiceConfig(tick_interval=10.0),
        plugins={"poller": PluginConfig(name="poller", schedules=(Schedule(**schedule),))},
    )


class SchedulerTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.queue, _, _ = make_queue(self, self.clock)

    async def _jobs(self) -> list[dict]:
        return await self.queue.list_jobs(plugin="poller", limit=100)

    async def test_every_with_jitter(self) -> None:
        """
        The first run comes one jitter after start, the next every + a new
        jitter later; nothing fires between ticks.
        """
        draws = iter([0.5, 0.25])
        sched = Scheduler(self.clock, self.queue, _config(every=60.0, jitter=20.0), {"poller": _Plugin()},
                          rng=lambda: next(draws))
        self.assertEqual(sched.entries[0].next_at, self.clock.seconds() + 10.0)
        await sched.tick()
        self.assertEqual(await self._jobs(), [])
        self.clock.advance(10)
        await sched.tick()
        jobs = await self._jobs()
        self.assertEqual([(j["command"], j["submitted_by"]) for j in jobs], [("poll", "schedule:default")])
        self.assertEqual(sched.entries[0].next_at, self.clock.seconds() + 65.0)

    async def test_if_running_skip(self) -> None:
        """With if_running: skip, a firing while the last poll is queued is dropped."""
        sched = Scheduler(self.clock, self.queue, _config(every=60.0), {"poller": _Plugin()}, rng=lambda: 0.0)
        await sched.tick()
        self.clock.advance(60)
        await sched.tick()
        self.assertEqual(len(await self._jobs()), 1)
        [job] = await self.queue.claim(1)
        await self.queue.complete(job, Completion("succeeded", result="ok"))
        self.clock.advance(60)
        await sched.tick()
        self.assertEqual(len(await self._jobs()), 2)

    async def test_if_running_queue(self) -> None:
        """With if_running: queue, every firing enqueues."""
        sched = Scheduler(self.clock, self.queue, _config(every=60.0, if_running="queue"), {"poller": _Plugin()},
                          rng=lambda: 0.0)
        await sched.tick()
        self.clock.advance(60)
        await sched.tick()
        self.assertEqual(len(await self._jobs()), 2)

    async def test_unloaded_plugin_not_scheduled(self) -> None:
        """Schedules of plugins that did not load are ignored."""
        sched = Scheduler(self.clock, self.queue, _config(every=60.0), {}, rng=lambda: 0.0)
        self.assertEqual(sched.entries, [])

    async def test_loop_runs_on_tick_interval(self) -> None:
        """start() ticks at once and then every tick_interval on the clock."""
        sched = Scheduler(self.clock, self.queue, _config(every=15.0, if_running="queue"), {"poller": _Plugin()},
                          rng=lambda: 0.0)
        sched.start()
        self.addCleanup(sched.stop)
        await sched.tick()
        self.assertEqual(len(await self._jobs()), 1)
        self.clock.advance(10)  # tick at +10: not due (due at +15)
        await sched.tick()
        self.clock.advance(10)  # tick at +20: due
        await sched.tick()
        self.assertEqual(len(await self._jobs()), 2)
