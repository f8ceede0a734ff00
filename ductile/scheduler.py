"""
Plugin schedules (C{plugins.<n>.schedules}), checked every
C{service.tick_interval} on the injected clock.

A schedule first fires one jitter after start (so a fleet of instances
started together does not poll in lockstep), then every C{every} plus a
fresh jitter.  C{if_running: skip} drops a firing while the same plugin
command is still queued or running; C{queue} enqueues regardless.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ductile.config.models import Config, Schedule
from ductile.queue import QUEUED, RUNNING, JobQueue, JobSpec


@attrs.define
class _Entry:
    plugin: str
    schedule: Schedule
    next_at: float


class Scheduler:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        queue: JobQueue,
        config: Config,
        plugins: Mapping[str, Any],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._queue = queue
        self._config = config
        self._rng = rng
        now = clock.seconds()
        self.entries = [
            _Entry(name, sched, now + self._jitter(sched))
            for name, settings in sorted(config.plugins.items())
            if settings.enabled and name in plugins
            for sched in settings.schedules
        ]
        self._loop: task.LoopingCall | None = None
        self._ticking: defer.Deferred[None] | None = None

    def _jitter(self, sched: Schedule) -> float:
        return self._rng() * sched.jitter if sched.jitter > 0 else 0.0

    def start(self) -> None:
        if not self.entries:
            return
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self._clock
        self._loop.start(self._config.service.tick_interval, now=True).addErrback(
            lambda f: self.log.failure("scheduler loop stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def tick(self) -> defer.Deferred[None]:
        """Fire every due schedule; returns when their jobs are committed."""
        if self._ticking is not None:
            return self._ticking
        ticking = defer.ensureDeferred(self._tick())
        ticking.addErrback(lambda f: self.log.failure("scheduler tick failed", f))
        if not ticking.called:
            self._ticking = ticking

            def done(result: Any) -> Any:
                self._ticking = None
                return result

            ticking.addBoth(done)
        return ticking

    async def _tick(self) -> None:
        now = self._clock.seconds()
        for entry in self.entries:
            if entry.next_at > now:
                continue
            sched = entry.schedule
            entry.next_at = now + sched.every + self._jitter(sched)
            if sched.if_running == "skip":
                busy = await self._queue.list_jobs(
                    status=(QUEUED, RUNNING), plugin=entry.plugin, command=sched.command, limit=1
                )
                if busy:
                    self.log.info(
                        "schedule {plugin}/{schedule_id} skipped: {command} still {status}",
                        plugin=entry.plugin, schedule_id=sched.id, command=sched.command, status=busy[0]["status"],
                    )
                    continue
            settings = self._config.plugin_config(entry.plugin)
            [result] = await self._queue.enqueue(
                [
                    JobSpec(
                        entry.plugin, sched.command, dict(sched.payload), submitted_by=f"schedule:{sched.id}",
                        max_attempts=settings.retry.max_attempts,
                    )
                ]
            )
            self.log.info(
                "schedule {plugin}/{schedule_id} enqueued {command} job {job_id}",
                plugin=entry.plugin, schedule_id=sched.id, command=sched.command, job_id=result.job_id,
            )
