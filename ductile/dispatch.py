"""
The dispatcher: claims due jobs and runs them within the worker caps.

Work starts when it becomes possible — after a commit that made a job
claimable, when a worker finishes, or when the earliest waiting retry falls
due (one C{callLater} on the injected clock) — never on a polling tick.

Claims run ahead of the workers (prefetch): besides the jobs it can start
now, the dispatcher keeps up to C{prefetch} more jobs claimed (C{running}
with no C{started_at}, see L{JobQueue.claim}).  When a worker finishes, the
next claimed job starts at once, and the commit that records the finished
job, the start and the claim that refills the prefetch runs while the new
plugin does: no commit sits between one job and the next.  A claimed job
holds no worker and no process; the caps (C{max_workers}, each plugin's
parallelism) count only started jobs.  On stop, claimed jobs that have not
started are released as the same attempt; after a crash, recovery does the
same (L{JobQueue.recover}).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ductile.errors import StorageUnavailable
from ductile.queue import ClaimedJob, JobQueue

Execute = Callable[[ClaimedJob], "defer.Deferred[Any]"]


def default_prefetch(max_workers: int) -> int:
    """
    How many jobs to keep claimed ahead: enough to cover the claim's round
    trip (it may wait for the commit in progress, then make its own: two
    fsyncs, several short jobs long), so a worker never waits for the
    database — four per worker for small pools, at most 16, and at least one
    per worker.  Measured (bench/fig_pipeline.py, 1-step /bin/sh, 2 workers):
    none 0.40x raw, one per worker 0.50x, four per worker 0.53-0.60x.
    """
    return max(max_workers, min(4 * max_workers, 16))


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
        prefetch: int | None = None,
    ) -> None:
        """
        @param plugin_caps: returns the parallelism cap of every known plugin
            (a plugin missing from it is capped at C{max_workers}).
        @param prefetch: how many claimed jobs may wait for a worker
            (default L{default_prefetch}; 0 claims only for free workers).
        """
        self._clock = clock
        self._queue = queue
        self._execute = execute
        self.max_workers = max(1, max_workers)
        self.prefetch = default_prefetch(self.max_workers) if prefetch is None else max(0, prefetch)
        #: While every worker is busy, claim again only once this many are
        #: missing from the prefetch (half of it).
        self._refill_at = max(1, self.prefetch // 2)
        self._plugin_caps = plugin_caps
        self._running: dict[str, tuple[ClaimedJob, defer.Deferred[Any]]] = {}
        #: Claimed, not started (oldest first).
        self._ready: list[ClaimedJob] = []
        #: Bumped by L{release_claimed}: a claim from an older generation
        #: returns jobs claimed under a config no longer in service.
        self._generation = 0
        self._claiming = False
        self._claim: defer.Deferred[Any] | None = None
        self._releasing: list[defer.Deferred[Any]] = []
        self._again = False
        self._stopping = False
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        #: Started jobs whose process has ended or whose outcome is being
        #: committed: they no longer hold a worker.
        self._finishing: set[str] = set()
        #: Started jobs still holding a worker, in all and per plugin (kept
        #: as counts: they are read on every kick).
        self._busy_count = 0
        self._busy_by_plugin: dict[str, int] = {}
        queue.on_new_work(self.kick)
        queue.on_completing(self._completing)
        queue.on_ending(self._ending)

    @property
    def running(self) -> list[ClaimedJob]:
        """Started jobs whose executor has not returned yet."""
        return [job for job, _ in self._running.values()]

    @property
    def claimed(self) -> list[ClaimedJob]:
        """Jobs claimed ahead, waiting for a worker (not started)."""
        return list(self._ready)

    def start(self) -> None:
        self._stopping = False
        self.kick()

    def kick(self) -> None:
        """Start what the caps allow, and claim ahead up to the prefetch."""
        if self._stopping:
            return
        if self._ready:
            self._start_ready()
        if self._claiming:
            self._again = True
            return
        idle = self.max_workers - self._busy_count
        want = idle + self.prefetch - len(self._ready)
        if want <= 0:
            return
        if idle <= 0 and want < self._refill_at:
            # Every worker is busy and enough are claimed ahead: refill in
            # larger claims rather than one job per commit.
            return
        held = dict(self._busy_by_plugin)
        for job in self._ready:
            held[job.plugin] = held.get(job.plugin, 0) + 1
        # Per plugin: its free workers now, plus its share of the prefetch
        # (in proportion to its cap: a serial plugin gets few claimed ahead).
        caps = self._plugin_caps()
        slots = {name: cap + self._ahead(cap) - held.get(name, 0) for name, cap in caps.items()}
        for name, n in held.items():
            slots.setdefault(name, self.max_workers + self.prefetch - n)
        self._claiming = True
        d = self._queue.claim(want, slots, default_slots=want)
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(want, self._generation))
        self._claim = d

    def _ahead(self, cap: int) -> int:
        """How many jobs of a plugin capped at C{cap} may be claimed ahead."""
        return -(-self.prefetch * min(cap, self.max_workers) // self.max_workers)

    def _claimed(self, jobs: list[ClaimedJob], want: int, generation: int = 0) -> Any:
        self._claiming = False
        if self._stopping:
            # Claimed while stop() was under way: hand them back untouched.
            self._release(jobs)
            return None
        if generation != self._generation:
            # Claimed before a config reload: back to the queue, and claim
            # again under the config now in service.
            self._release(jobs)
            self.kick()
            return None
        self._ready += jobs
        self._start_ready()
        if self._again:
            self._again = False
            self.kick()
        elif len(jobs) < want:
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

    def _start_ready(self) -> None:
        """Start claimed jobs, oldest first, while a worker and their plugin's cap allow."""
        if not self._ready:
            return
        free = self.max_workers - self._busy_count
        if free <= 0:
            return
        caps = self._plugin_caps()
        running_by_plugin = self._busy_by_plugin
        starting: list[ClaimedJob] = []
        waiting: list[ClaimedJob] = []
        for job in self._ready:
            n = running_by_plugin.get(job.plugin, 0)
            if free > 0 and n < caps.get(job.plugin, self.max_workers):
                starting.append(job)
                running_by_plugin[job.plugin] = n + 1
                free -= 1
            else:
                waiting.append(job)
        if not starting:
            return
        self._busy_count += len(starting)
        self._ready = waiting
        # Recorded first, so it precedes the completion in the same commit
        # when the job ends at once; nobody waits for it.
        self._queue.started(starting).addErrback(self._start_not_recorded, starting)
        # Every one holds its worker before any executor runs: an executor may
        # finish synchronously and kick() again from inside this loop.
        started = []
        for job in starting:
            done: defer.Deferred[None] = defer.Deferred()
            self._running[job.id] = (job, done)
            started.append((job, done))
        for job, done in started:
            self._run(job, done)

    def _start_not_recorded(self, failure: Any, jobs: list[ClaimedJob]) -> None:
        """
        The jobs run anyway; if the daemon crashed now, recovery would put
        them back as the same attempt (they would run again, uncounted).
        """
        ids = ", ".join(job.id for job in jobs)
        if failure.check(StorageUnavailable):
            self.log.warn("cannot record the start of job(s) {job_ids}: {error}", job_ids=ids,
                          error=str(failure.value))
        else:
            self.log.failure("recording the start of job(s) {job_ids} failed", failure, job_ids=ids)

    def _run(self, job: ClaimedJob, done: defer.Deferred[None]) -> None:
        d = defer.maybeDeferred(self._execute, job)
        d.addErrback(
            lambda f: self.log.failure(
                "job {job_id} ({plugin}) crashed in the executor", f, job_id=job.id, plugin=job.plugin
            )
        )
        d.addBoth(self._finished, job, done)

    def _ending(self, job: ClaimedJob) -> None:
        """
        A running job's process has ended: its worker takes the next claimed
        job now.  The claim that refills the prefetch waits for the job's
        completion (L{_completing}), so that it joins the completion's
        transaction after it and sees the successors it creates.
        """
        if self._free_worker(job) and not self._stopping:
            self._start_ready()

    def _completing(self, job: ClaimedJob) -> None:
        """A running job's outcome is being committed: its slot is free now."""
        if job.id in self._running:
            self._free_worker(job)
            self.kick()

    def _free_worker(self, job: ClaimedJob) -> bool:
        """C{job} no longer holds its worker; False if it already did not."""
        if job.id not in self._running or job.id in self._finishing:
            return False
        self._finishing.add(job.id)
        self._busy_count -= 1
        n = self._busy_by_plugin[job.plugin] - 1
        if n:
            self._busy_by_plugin[job.plugin] = n
        else:
            del self._busy_by_plugin[job.plugin]
        return True

    def _finished(self, _: Any, job: ClaimedJob, done: defer.Deferred[None]) -> None:
        self._free_worker(job)
        self._running.pop(job.id, None)
        self._finishing.discard(job.id)
        done.callback(None)
        self.kick()

    def release_claimed(self) -> None:
        """
        Hand the jobs claimed ahead back to the queue, as the same attempt:
        a config reload, after which they are claimed again under the new
        config (or made dead with a plugin the reload removed).  A claim in
        flight hands its jobs back when it returns.
        """
        ready, self._ready = self._ready, []
        self._release(ready)
        self._generation += 1

    def _release(self, jobs: list[ClaimedJob]) -> None:
        if not jobs:
            return
        d = self._queue.release(jobs)
        d.addErrback(lambda f: self.log.failure("releasing claimed jobs failed", f))
        self._releasing.append(d)

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
        Start nothing new and release the jobs claimed ahead; fire once every
        running job has finished (the plugin runner gives running plugins
        their grace period).
        """
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        ready, self._ready = self._ready, []
        self._release(ready)
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        if self._claim is not None and not self._claim.called:
            await self._claim  # its jobs are released, not started
        releasing, self._releasing = self._releasing, []
        await defer.DeferredList(releasing, consumeErrors=True)
        pending = [d for _, d in self._running.values()]
        await defer.DeferredList(pending, consumeErrors=True)
