"""
Plugin schedules (C{plugins.<n>.schedules}), each armed with C{callLater}
on the injected clock for its next firing.

Triggers (exactly one per schedule):
  - C{every}: first one jitter after start (so a fleet started together
    does not poll in lockstep), then every C{every} plus a fresh jitter.
  - C{cron}: the next matching minute in C{timezone} (default: the local
    zone, as ductile-go's C{time.Local}); see L{ductile.cron}.  If the
    current minute matches at start it fires at once, as in ductile-go.
  - C{at}: once, at an RFC 3339 time (at once if that is past and it never
    fired).
  - C{after}: once, that long after the first start.  The due time is stored,
    so a restart does not push it back.
State lives in C{schedule_entries} (keyed by plugin and schedule id), as in
ductile-go: a one-shot is recorded C{exhausted} after firing and never
fires again (give the schedule a new id to run it again); a recurring
schedule stores its next run, so a restart neither repeats a firing nor
forgets one that fell due while the instance was down (that one runs once,
at start; the stored time is dropped if the command changed, or for cron if
it is not a slot of the current expression).  C{catch_up: run_all} on an
C{every} schedule enqueues one job per missed interval instead (at most
100); C{skip} and C{run_once} both give the one run, as in ductile-go.

C{only_between} / C{not_on} (read in C{timezone}, default UTC as in
ductile-go) hold a due firing until the window opens; it then fires once.
C{if_running: skip} drops a recurring firing while the same plugin command
is queued or running (a one-shot waits a tick and tries again); C{queue}
enqueues regardless.
"""
from __future__ import annotations

import math
import random
from datetime import datetime, timezone, tzinfo
from typing import Any, Callable, Mapping

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ductile.config.models import Config, Schedule
from ductile.cron import CronExpr, load_zone, local_zone, parse_cron
from ductile.queue import QUEUED, RUNNING, JobQueue, JobSpec

ACTIVE = "active"
EXHAUSTED = "exhausted"
#: Most runs C{catch_up: run_all} enqueues at start (ductile-go's cap).
CATCH_UP_MAX = 100


def missed_runs(last_fired: float, now: float, every: float) -> int:
    """Whole intervals that fell due after C{last_fired} up to C{now} (Go's countMissedRuns)."""
    if every <= 0 or now < last_fired + every:
        return 0
    return int((now - last_fired - every) // every) + 1


@attrs.define(eq=False)
class _Entry:
    plugin: str
    schedule: Schedule
    cron: CronExpr | None = None
    cron_zone: tzinfo = timezone.utc
    window_zone: tzinfo = timezone.utc
    next_at: float | None = None
    call: IDelayedCall | None = None


class ScheduleStore:
    """
    The C{schedule_entries} rows (contract §4.1): each schedule's next run,
    last firing, and whether a one-shot already fired.
    """

    def __init__(self, pool: Any, clock: IReactorTime) -> None:
        self._pool = pool
        self._clock = clock

    def load(self) -> defer.Deferred[dict[tuple[str, str], dict[str, Any]]]:
        def q(txn: Any) -> dict[tuple[str, str], dict[str, Any]]:
            txn.execute(
                "SELECT plugin, schedule_id, command, status, reason, last_fired_at, next_run_at"
                " FROM schedule_entries"
            )
            return {
                (r[0], r[1]): {"command": r[2], "status": r[3], "reason": r[4], "last_fired_at": r[5], "next_run_at": r[6]}
                for r in txn.fetchall()
            }

        return self._pool.runInteraction(q)

    def save(
        self, plugin: str, schedule_id: str, command: str, *, status: str = ACTIVE, reason: str | None = None,
        last_fired_at: float | None = None, next_run_at: float | None = None,
    ) -> defer.Deferred[None]:
        now = self._clock.seconds()

        def q(txn: Any) -> None:
            txn.execute(
                "INSERT INTO schedule_entries (plugin, schedule_id, command, status, reason, last_fired_at,"
                " next_run_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (plugin, schedule_id) DO UPDATE SET command = excluded.command,"
                " status = excluded.status, reason = excluded.reason,"
                " last_fired_at = COALESCE(excluded.last_fired_at, last_fired_at),"
                " next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
                (plugin, schedule_id, command, status, reason, last_fired_at, next_run_at, now),
            )

        return self._pool.runInteraction(q)


class Scheduler:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        queue: JobQueue,
        config: Config,
        plugins: Mapping[str, Any],
        rng: Callable[[], float] = random.random,
        store: ScheduleStore | None = None,
        zone: tzinfo | None = None,
    ) -> None:
        """
        @param store: where schedule state lives; by default the queue's
            database (its pool).
        @param zone: the local zone for C{cron} schedules without a
            C{timezone} (default: found as Go finds C{time.Local}).
        """
        self._clock = clock
        self._queue = queue
        self._config = config
        self._rng = rng
        self._store = store if store is not None else ScheduleStore(queue._pool, clock)
        local = zone if zone is not None else local_zone()
        self.entries: list[_Entry] = []
        for name, settings in sorted(config.plugins.items()):
            if not settings.enabled or name not in plugins:
                continue
            for sched in settings.schedules:
                named = load_zone(sched.timezone) if sched.timezone else None
                self.entries.append(
                    _Entry(
                        name, sched,
                        cron=parse_cron(sched.cron) if sched.cron is not None else None,
                        cron_zone=named or local,
                        window_zone=named or timezone.utc,
                    )
                )
        self._running = False
        self._inflight: set[defer.Deferred[None]] = set()

    def _jitter(self, sched: Schedule) -> float:
        return self._rng() * sched.jitter if sched.jitter > 0 else 0.0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """
        Arm every schedule from its stored state; the result fires once all
        are armed.
        """
        self._running = True
        d = defer.ensureDeferred(self._start(self._clock.seconds()))
        d.addErrback(lambda f: self.log.failure("scheduler failed to start", f))
        return d

    async def _start(self, now: float) -> None:
        try:
            state = await self._store.load()
        except Exception:
            # Recurring schedules still run (from scratch); one-shots wait
            # for a restart rather than risk running twice.
            self.log.failure("scheduler could not read schedule state; one-shot schedules are not armed")
            state = None
        for entry in self.entries:
            sched = entry.schedule
            row = state.get((entry.plugin, sched.id)) if state is not None else None
            if sched.trigger in ("at", "after"):
                if state is not None:
                    await self._arm_one_shot(entry, row, now)
                continue
            stored = row["next_run_at"] if row is not None and row["command"] == sched.command else None
            if sched.trigger == "cron":
                assert entry.cron is not None
                zone = entry.cron_zone
                if stored is not None and entry.cron.next_fire(stored - 1, zone) == stored:
                    # Due while we were down: it runs once now (as in
                    # ductile-go); otherwise at its slot.
                    due = stored
                else:
                    # The current minute counts if it matches (ductile-go
                    # fires a matching minute at its first look).
                    due = entry.cron.next_fire(math.floor(now / 60) * 60 - 1, zone)
            elif stored is not None:
                last = row["last_fired_at"] if row is not None else None
                missed = missed_runs(last, now, sched.every) if last is not None else 0
                if sched.catch_up == "run_all" and missed > 1:
                    due = await self._catch_up(entry, last, missed)
                else:
                    # Overdue: once, at start (skip and run_once alike, as
                    # in ductile-go); never later than one (maybe shortened)
                    # interval from now.
                    due = min(stored, now + sched.every + self._jitter(sched))
            else:
                due = now + self._jitter(sched)
            self._arm(entry, due)
            if due != stored:
                await self._store.save(entry.plugin, sched.id, sched.command, next_run_at=due)

    async def _catch_up(self, entry: _Entry, last: float, missed: int) -> float:
        """
        C{catch_up: run_all}: one job per interval missed while down (at most
        L{CATCH_UP_MAX}), enqueued at once whatever C{if_running} says, as
        ductile-go does; returns the next regular run.
        """
        sched = entry.schedule
        count = min(missed, CATCH_UP_MAX)
        settings = self._config.plugin_config(entry.plugin)
        spec = JobSpec(
            entry.plugin, sched.command, dict(sched.payload), submitted_by=f"schedule:{sched.id}",
            max_attempts=settings.retry.max_attempts,
        )
        await self._queue.enqueue([spec] * count)
        self.log.info(
            "schedule {plugin}/{schedule_id} caught up {count} of {missed} missed runs",
            plugin=entry.plugin, schedule_id=sched.id, count=count, missed=missed,
        )
        fired = last + count * sched.every
        await self._store.save(entry.plugin, sched.id, sched.command, last_fired_at=fired, next_run_at=None)
        return fired + sched.every

    async def _arm_one_shot(self, entry: _Entry, row: dict[str, Any] | None, now: float) -> None:
        sched = entry.schedule
        if row is not None and row["status"] == EXHAUSTED:
            self.log.info(
                "schedule {plugin}/{schedule_id} already fired once; not armed",
                plugin=entry.plugin, schedule_id=sched.id,
            )
            return
        if sched.at is not None:
            due = sched.at
        elif row is not None and row["next_run_at"] is not None:
            due = row["next_run_at"]
        else:
            assert sched.after is not None
            due = now + sched.after
            await self._store.save(entry.plugin, sched.id, sched.command, next_run_at=due)
        self._arm(entry, due)

    def stop(self) -> defer.Deferred[None]:
        """Disarm every schedule; the result fires once firings in progress finish."""
        self._running = False
        for entry in self.entries:
            if entry.call is not None and entry.call.active():
                entry.call.cancel()
            entry.call = None
        return self.settled()

    def settled(self) -> defer.Deferred[None]:
        """Fires when every firing in progress has finished (for tests and shutdown)."""
        pending = list(self._inflight)
        return defer.DeferredList(pending).addCallback(lambda _: None)

    # -- firing ------------------------------------------------------------

    def _arm(self, entry: _Entry, at: float) -> None:
        if not self._running:
            return
        entry.next_at = at
        entry.call = self._clock.callLater(max(0.0, at - self._clock.seconds()), self._fire, entry)

    def _fire(self, entry: _Entry) -> None:
        entry.call = None
        d = defer.ensureDeferred(self._run(entry))
        d.addErrback(
            lambda f: self.log.failure(
                "schedule {plugin}/{schedule_id} firing failed", f, plugin=entry.plugin, schedule_id=entry.schedule.id
            )
        )
        if not d.called:
            self._inflight.add(d)
            d.addBoth(lambda r: (self._inflight.discard(d), r)[1])

    async def _run(self, entry: _Entry) -> None:
        sched = entry.schedule
        now = self._clock.seconds()
        opens = next_allowed(now, sched, entry.window_zone)
        if opens > now:
            self.log.info(
                "schedule {plugin}/{schedule_id} held until its window opens at {opens}",
                plugin=entry.plugin, schedule_id=sched.id, opens=datetime.fromtimestamp(opens, timezone.utc).isoformat(),
            )
            self._arm(entry, opens)
            return
        one_shot = sched.trigger in ("at", "after")
        fired = False
        try:
            fired = await self._enqueue(entry)
            if one_shot and fired:
                await self._store.save(
                    entry.plugin, sched.id, sched.command, status=EXHAUSTED, reason="one_shot_exhausted",
                    last_fired_at=now,
                )
            elif one_shot:  # a one-shot is not lost: it tries again a tick later
                self._arm(entry, now + self._config.service.tick_interval)
        finally:
            if not one_shot:
                due = self._next(entry, now)
                self._arm(entry, due)
        if not one_shot:
            # Remembered so a restart neither repeats this firing nor loses
            # the next one.
            await self._store.save(
                entry.plugin, sched.id, sched.command, last_fired_at=now if fired else None, next_run_at=due
            )

    async def _enqueue(self, entry: _Entry) -> bool:
        """Enqueue the schedule's job; C{False} if C{if_running: skip} dropped it."""
        sched = entry.schedule
        if sched.if_running == "skip":
            busy = await self._queue.list_jobs(
                status=(QUEUED, RUNNING), plugin=entry.plugin, command=sched.command, limit=1
            )
            if busy:
                self.log.info(
                    "schedule {plugin}/{schedule_id} skipped: {command} still {status}",
                    plugin=entry.plugin, schedule_id=sched.id, command=sched.command, status=busy[0]["status"],
                )
                return False
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
        return True

    def _next(self, entry: _Entry, now: float) -> float:
        sched = entry.schedule
        if entry.cron is not None:
            # From the slot just served, or from now if the clock ran past
            # later slots (a suspended host): those are not replayed.
            slot = entry.next_at if entry.next_at is not None else now
            return entry.cron.next_fire(max(slot, now), entry.cron_zone)
        return now + sched.every + self._jitter(sched)


def next_allowed(t: float, sched: Schedule, zone: tzinfo) -> float:
    """
    The first instant at or after C{t} inside the schedule's C{only_between}
    window and not on a C{not_on} weekday, both read in C{zone} at minute
    granularity (as ductile-go reads them).
    """
    if sched.only_between is None and not sched.not_on:
        return t
    for _ in range(20_000):
        local = datetime.fromtimestamp(t, zone)
        wait = _minutes_to_window(local, sched)
        if wait == 0:
            return t
        start_of_minute = math.floor(t / 60) * 60
        # The naive wait is exact while the UTC offset holds; across a
        # change of offset (which may skip the opening or repeat it) go in
        # shorter steps, down to a minute.
        step, offset = wait, local.utcoffset()
        while step > 1 and datetime.fromtimestamp(start_of_minute + 60 * step, zone).utcoffset() != offset:
            step //= 2
        t = start_of_minute + 60 * step
    raise ValueError(f"schedule {sched.id}: its window never opens")


def _minutes_to_window(local: datetime, sched: Schedule) -> int:
    """Minutes until the window opens, reading the clock naively (0: open now)."""
    minute = local.hour * 60 + local.minute
    if (local.weekday() + 1) % 7 in sched.not_on:
        return 1440 - minute
    if sched.only_between is None:
        return 0
    start, end = sched.only_between
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if inside:
        return 0
    return (start - minute) % 1440
