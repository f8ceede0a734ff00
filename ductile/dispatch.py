"""
The dispatcher: claims due jobs and runs them within the worker caps.

Work starts when it becomes possible — after a commit that made a job
claimable, when a worker finishes, or when the earliest waiting retry falls
due (one C{callLater} on the injected clock) — never on a polling tick.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ductile.errors import StorageUnavailable
from ductile.queue import ClaimedJob, JobQueue

Execute = Callable[[ClaimedJob], "defer.Deferred[Any]"]


class Dispatcher:
    log = Logger()

    #: Seconds to wait before claiming again after the database refused.
    retry_after_error = 1.0

    def __init__(
        self,
        clock: IReactorTime,
        queue: JobQueue,
        execute: Execute,
        max_workers: int,
        plugin_caps: Callable[[], Mapping[str, int]],
    ) -> None:
        """
        @param plugin_caps: returns the parallelism cap of every known plugin
            (a plugin missing from it is capped at C{max_workers}).
        """
        self._clock = clock
        self._queue = queue
        self._execute = execute
        self.max_workers = max(1, max_workers)
        self._plugin_caps = plugin_caps
        self._running: dict[str, tuple[ClaimedJob, defer.Deferred[Any]]] = {}
        self._claiming = False
        self._claim: defer.Deferred[Any] | None = None
        self._releasing: defer.Deferred[Any] | None = None
        self._again = False
        self._stopping = False
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._finishing: set[str] = set()
        queue.on_new_work(self.kick)
        queue.on_completing(self._completing)

    @property
    def running(self) -> list[ClaimedJob]:
        return [job for job, _ in self._running.values()]

    def start(self) -> None:
        self._stopping = False
        self.kick()

    def kick(self) -> None:
        """Claim and start as many due jobs as the caps allow."""
        if self._stopping:
            return
        if self._claiming:
            self._again = True
            return
        busy = [job for job, _ in self._running.values() if job.id not in self._finishing]
        free = self.max_workers - len(busy)
        if free <= 0:
            return
        running_by_plugin: dict[str, int] = {}
        for job in busy:
            running_by_plugin[job.plugin] = running_by_plugin.get(job.plugin, 0) + 1
        caps = self._plugin_caps()
        slots = {name: cap - running_by_plugin.get(name, 0) for name, cap in caps.items()}
        for name, n in running_by_plugin.items():
            slots.setdefault(name, self.max_workers - n)
        self._claiming = True
        d = self._queue.claim(free, slots, default_slots=free)
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(free,))
        self._claim = d

    def _claimed(self, jobs: list[ClaimedJob], free: int) -> Any:
        self._claiming = False
        if self._stopping:
            # Claimed while stop() was under way: hand them back untouched.
            if jobs:
                self._releasing = self._queue.release(jobs)
                self._releasing.addErrback(lambda f: self.log.failure("releasing claimed jobs failed", f))
            return None
        for job in jobs:
            self._start(job)
        if self._again:
            self._again = False
            self.kick()
        elif len(jobs) < free:
            self._arm_due_timer()

    def _claim_failed(self, failure: Any) -> None:
        self._claiming = False
        self._again = False
        if failure.check(StorageUnavailable):
            self.log.warn("cannot claim jobs: {error}; trying again in {delay}s", error=str(failure.value),
                          delay=self.retry_after_error)
        else:
            self.log.failure("claiming jobs failed; trying again in {delay}s", failure, delay=self.retry_after_error)
        self._arm(self._clock.seconds() + self.retry_after_error)

    def _start(self, job: ClaimedJob) -> None:
        # Registered before the executor runs: it may fire synchronously.
        done: defer.Deferred[None] = defer.Deferred()
        self._running[job.id] = (job, done)
        d = defer.maybeDeferred(self._execute, job)
        d.addErrback(
            lambda f: self.log.failure(
                "job {job_id} ({plugin}) crashed in the executor", f, job_id=job.id, plugin=job.plugin
            )
        )
        d.addBoth(self._finished, job, done)

    def _completing(self, job: ClaimedJob) -> None:
        """A running job's outcome is being committed: its slot is free now."""
        if job.id in self._running and job.id not in self._finishing:
            self._finishing.add(job.id)
            self.kick()

    def _finished(self, _: Any, job: ClaimedJob, done: defer.Deferred[None]) -> None:
        self._running.pop(job.id, None)
        self._finishing.discard(job.id)
        done.callback(None)
        self.kick()

    def _arm_due_timer(self) -> None:
        if self._stopping or not self._queue.retries_may_be_pending:
            return
        d = self._queue.next_due()
        d.addCallback(lambda at: self._arm(at) if at is not None else None)
        d.addErrback(lambda f: self.log.failure("reading the next retry time failed", f))

    def _arm(self, at: float) -> None:
        if self._stopping:
            return
        if self._timer is not None and self._timer.active():
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        delay = max(0.0, at - self._clock.seconds())
        self._timer_at = at
        self._timer = self._clock.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = None
        self.kick()

    def stop(self) -> defer.Deferred[None]:
        """
        Start nothing new; fire once every running job has finished (the
        plugin runner gives running plugins their grace period).
        """
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        if self._claim is not None and not self._claim.called:
            await self._claim  # its jobs are released, not started
        if self._releasing is not None:
            await self._releasing
        pending = [d for _, d in self._running.values()]
        await defer.DeferredList(pending, consumeErrors=True)
