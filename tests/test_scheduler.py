"""
Schedules driven by a Clock over a real queue file, and their config.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.config.models import Config, PluginConfig, Schedule, ServiceConfig
from ductile.queue import Completion
from ductile.scheduler import Scheduler, next_allowed
from ductile.testing.db import make_queue
from tests.test_config_loader import ConfigDirMixin

UTC = timezone.utc
LONDON = ZoneInfo("Europe/London")


def at(zone, *fields, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=zone, fold=fold).timestamp()


class _Plugin:
    concurrency_safe = True


def _config(*schedules: Schedule, **one: Any) -> Config:
    if one:
        schedules = (Schedule(**one),)
    return Config(
        config_file="/x/config.yaml",
        config_dir="/x",
        service=ServiceConfig(tick_interval=10.0),
        plugins={"poller": PluginConfig(name="poller", schedules=tuple(schedules))},
    )


class SchedulerTests(TestCase):
    START = 1_800_000_000.0

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(self.START)
        self.queue, self.pool, self.path = make_queue(self, self.clock)

    def scheduler(self, config: Config, rng=lambda: 0.0, **kw: Any) -> Scheduler:
        sched = Scheduler(self.clock, self.queue, config, {"poller": _Plugin()}, rng=rng, **kw)
        self.addCleanup(sched.stop)
        return sched

    async def advance(self, sched: Scheduler, seconds: float) -> None:
        self.clock.advance(seconds)
        await sched.settled()

    async def advance_to(self, sched: Scheduler, when: float) -> None:
        """Run the clock to C{when}, stopping at each timer as real time would."""
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls()]
            step = min([d for d in due if d <= when], default=when)
            await self.advance(sched, step - self.clock.seconds())
            if step >= when and not any(c.getTime() <= when for c in self.clock.getDelayedCalls()):
                return

    async def _jobs(self) -> list[dict]:
        return await self.queue.list_jobs(plugin="poller", limit=1000)

    async def _times(self) -> list[float]:
        return sorted(j["created_at"] for j in await self._jobs())

    async def _finish_all(self) -> None:
        for job in await self.queue.claim(100):
            await self.queue.complete(job, Completion("succeeded", result="ok"))

    # -- every -------------------------------------------------------------

    async def test_every_with_jitter(self) -> None:
        """
        The first run comes one jitter after start, the next every + a new
        jitter after it; nothing fires in between.
        """
        draws = iter([0.5, 0.25])
        sched = self.scheduler(_config(every=60.0, jitter=20.0), rng=lambda: next(draws))
        await sched.start()
        self.assertEqual(sched.entries[0].next_at, self.START + 10.0)
        await self.advance(sched, 9.9)
        self.assertEqual(await self._jobs(), [])
        await self.advance(sched, 0.1)
        jobs = await self._jobs()
        self.assertEqual([(j["command"], j["submitted_by"]) for j in jobs], [("poll", "schedule:default")])
        self.assertEqual(sched.entries[0].next_at, self.START + 10.0 + 65.0)

    async def test_if_running_skip(self) -> None:
        """
        With if_running: skip, a firing while the last poll is queued is
        dropped, and the next run is stored all the same.
        """
        sched = self.scheduler(_config(every=60.0))
        await sched.start()
        await self.advance(sched, 0)
        await self.advance(sched, 60)
        self.assertEqual(len(await self._jobs()), 1)
        rows = await self.pool.runQuery("SELECT last_fired_at, next_run_at FROM schedule_entries")
        self.assertEqual([tuple(r) for r in rows], [(self.START, self.START + 120)])
        await self._finish_all()
        await self.advance(sched, 60)
        self.assertEqual(len(await self._jobs()), 2)

    async def test_if_running_queue(self) -> None:
        """With if_running: queue, every firing enqueues."""
        sched = self.scheduler(_config(every=60.0, if_running="queue"))
        await sched.start()
        await self.advance(sched, 0)
        await self.advance(sched, 60)
        self.assertEqual(await self._times(), [self.START, self.START + 60])

    async def test_unloaded_plugin_not_scheduled(self) -> None:
        """Schedules of plugins that did not load are ignored."""
        sched = Scheduler(self.clock, self.queue, _config(every=60.0), {}, rng=lambda: 0.0)
        self.assertEqual(sched.entries, [])

    async def test_stop_cancels_timers(self) -> None:
        sched = self.scheduler(_config(Schedule(id="a", every=60.0), Schedule(id="b", cron="* * * * *")))
        await sched.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        sched.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        await self.advance(sched, 3600)
        self.assertEqual(await self._jobs(), [])

    # -- cron --------------------------------------------------------------

    async def test_cron_enqueues_at_the_right_clock_time(self) -> None:
        """
        A cron schedule arms one timer for its next minute and enqueues its
        poll job, in the real queue, exactly then; no polling tick.
        """
        self.clock.advance(at(UTC, 2026, 5, 1, 10, 7, 30) - self.clock.seconds())
        sched = self.scheduler(_config(cron="*/15 * * * *", timezone="UTC", if_running="queue",
                                       payload={"k": "v"}))
        await sched.start()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), at(UTC, 2026, 5, 1, 10, 15))
        await self.advance_to(sched, at(UTC, 2026, 5, 1, 10, 14, 59))
        self.assertEqual(await self._jobs(), [])
        await self.advance(sched, 1)
        [job] = await self._jobs()
        self.assertEqual((job["plugin"], job["command"], job["payload"], job["submitted_by"], job["created_at"]),
                         ("poller", "poll", {"k": "v"}, "schedule:default", at(UTC, 2026, 5, 1, 10, 15)))
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), at(UTC, 2026, 5, 1, 10, 30))
        await self.advance_to(sched, at(UTC, 2026, 5, 1, 10, 45))
        self.assertEqual(await self._times(), [at(UTC, 2026, 5, 1, 10, m) for m in (15, 30, 45)])

    async def test_cron_current_minute_fires_at_start(self) -> None:
        """As in ductile-go, a schedule whose minute is the current one fires at once."""
        self.clock.advance(at(UTC, 2026, 5, 1, 10, 0, 40) - self.clock.seconds())
        sched = self.scheduler(_config(cron="0 10 * * *", timezone="UTC"))
        await sched.start()
        await self.advance(sched, 0)
        self.assertEqual(await self._times(), [at(UTC, 2026, 5, 1, 10, 0, 40)])
        self.assertEqual(sched.entries[0].next_at, at(UTC, 2026, 5, 2, 10))

    async def test_cron_dst_in_zone(self) -> None:
        """
        Europe/London, 29 March 2026: 01:30 does not exist and fires once at
        the jump (02:00 BST); the next day it is 01:30 BST.
        """
        self.clock.advance(at(LONDON, 2026, 3, 28, 12) - self.clock.seconds())
        sched = self.scheduler(_config(cron="30 1 * * *", timezone="Europe/London", if_running="queue"))
        await sched.start()
        await self.advance_to(sched, at(LONDON, 2026, 3, 30, 12))
        self.assertEqual(await self._times(), [at(UTC, 2026, 3, 29, 1), at(UTC, 2026, 3, 30, 0, 30)])

    async def test_cron_repeated_hour_fires_once(self) -> None:
        self.clock.advance(at(LONDON, 2026, 10, 25, 0) - self.clock.seconds())
        sched = self.scheduler(_config(cron="30 1 * * *", timezone="Europe/London", if_running="queue"))
        await sched.start()
        for _ in range(6):
            await self.advance(sched, 1800)
        self.assertEqual(await self._times(), [at(UTC, 2026, 10, 25, 0, 30)])

    async def test_cron_default_zone_is_local(self) -> None:
        """Without timezone, cron reads local time (Go's time.Local): here New York."""
        self.clock.advance(at(UTC, 2026, 7, 1) - self.clock.seconds())
        sched = self.scheduler(_config(cron="0 9 * * *"), zone=ZoneInfo("America/New_York"))
        await sched.start()
        self.assertEqual(sched.entries[0].next_at, at(UTC, 2026, 7, 1, 13))

    async def test_cron_suspended_clock_does_not_replay(self) -> None:
        """If the clock jumps past several slots, the schedule fires once and resumes."""
        self.clock.advance(at(UTC, 2026, 5, 1, 10, 0, 30) - self.clock.seconds())
        sched = self.scheduler(_config(cron="*/5 * * * *", timezone="UTC", if_running="queue"))
        await sched.start()
        await self.advance(sched, 0)
        await self.advance(sched, 3600)
        self.assertEqual(len(await self._jobs()), 2)
        self.assertEqual(sched.entries[0].next_at, at(UTC, 2026, 5, 1, 11, 5))

    # -- restarts ----------------------------------------------------------

    async def test_cron_restart_in_the_same_minute_does_not_refire(self) -> None:
        self.clock.advance(at(UTC, 2026, 5, 1, 10, 0, 5) - self.clock.seconds())
        config = _config(cron="0 10 * * *", timezone="UTC", if_running="queue")
        first = await self.restart(config)
        await first.stop()
        self.clock.advance(20)
        second = await self.restart(config)
        self.assertEqual(await self._times(), [at(UTC, 2026, 5, 1, 10, 0, 5)])
        self.assertEqual(second.entries[0].next_at, at(UTC, 2026, 5, 2, 10))

    async def test_cron_slot_missed_while_down_runs_once_at_start(self) -> None:
        """As in ductile-go: the stored next run is due, so it runs at start, once."""
        self.clock.advance(at(UTC, 2026, 5, 1, 12) - self.clock.seconds())
        config = _config(cron="0 2 * * *", timezone="UTC", if_running="queue")
        first = await self.restart(config)
        self.assertEqual(first.entries[0].next_at, at(UTC, 2026, 5, 2, 2))
        await first.stop()
        self.clock.advance(at(UTC, 2026, 5, 4, 9) - self.clock.seconds())  # down for three nights
        second = await self.restart(config)
        self.assertEqual(await self._times(), [at(UTC, 2026, 5, 4, 9)])
        self.assertEqual(second.entries[0].next_at, at(UTC, 2026, 5, 5, 2))

    async def test_cron_stored_slot_of_another_expression_is_ignored(self) -> None:
        self.clock.advance(at(UTC, 2026, 5, 1, 12) - self.clock.seconds())
        first = await self.restart(_config(cron="0 2 * * *", timezone="UTC"))
        await first.stop()
        second = await self.restart(_config(cron="0 3 * * *", timezone="UTC"))
        self.assertEqual(second.entries[0].next_at, at(UTC, 2026, 5, 2, 3))
        await second.stop()
        third = await self.restart(_config(cron="0 3 * * *", timezone="UTC", command="sync"))
        self.assertEqual(third.entries[0].next_at, at(UTC, 2026, 5, 2, 3))
        self.assertEqual(await self._jobs(), [])

    async def test_every_restart_keeps_its_rhythm(self) -> None:
        """
        A restart before the next run waits for it; one after it runs once at
        start; a stored time beyond a (shortened) interval is brought forward.
        """
        config = _config(every=3600.0, if_running="queue")
        first = await self.restart(config)
        self.assertEqual(await self._times(), [self.START])
        await first.stop()
        self.clock.advance(600)
        second = await self.restart(config)
        self.assertEqual(second.entries[0].next_at, self.START + 3600)
        await second.stop()
        self.clock.advance(7200)
        third = await self.restart(config)
        self.assertEqual(await self._times(), [self.START, self.START + 7800])
        await third.stop()
        fourth = await self.restart(_config(every=60.0, if_running="queue"))
        self.assertEqual(fourth.entries[0].next_at, self.START + 7800 + 60)
        self.assertEqual(len(await self._jobs()), 2)

    async def test_catch_up(self) -> None:
        """
        Down for 5.5 intervals: skip and run_once run once at start; run_all
        runs the 5 missed slots at once (if_running notwithstanding, as
        ductile-go) and resumes on the grid.
        """
        for policy, expected in (("skip", 1), ("run_once", 1), ("run_all", 5)):
            with self.subTest(policy=policy):
                self.queue, self.pool, self.path = make_queue(self, self.clock)
                first = await self.restart(_config(every=3600.0))
                await first.stop()
                await self._finish_all()
                self.clock.advance(5.5 * 3600)
                second = await self.restart(_config(every=3600.0, catch_up=policy))
                self.assertEqual(len(await self._jobs()) - 1, expected)
                if policy == "run_all":
                    self.assertEqual(second.entries[0].next_at, self.clock.seconds() + 1800)
                await second.stop()

    async def test_catch_up_is_capped(self) -> None:
        first = await self.restart(_config(every=60.0))
        await first.stop()
        await self._finish_all()
        self.clock.advance(3 * 3600)
        await self.restart(_config(every=60.0, catch_up="run_all"))
        self.assertEqual(len(await self._jobs()), 1 + 100)

    # -- one-shots ---------------------------------------------------------

    async def restart(self, config: Config) -> Scheduler:
        sched = self.scheduler(config)
        await sched.start()
        await self.advance(sched, 0)
        return sched

    async def test_at_fires_once_and_not_after_restart(self) -> None:
        when = self.START + 3600
        config = _config(at=when)
        first = await self.restart(config)
        await self.advance(first, 3599)
        self.assertEqual(await self._jobs(), [])
        await self.advance(first, 1)
        self.assertEqual(await self._times(), [when])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        first.stop()
        await self._finish_all()
        await self.restart(config)
        await self.advance(first, 86400)
        self.assertEqual(await self._times(), [when])
        rows = await self.pool.runQuery("SELECT plugin, schedule_id, command, status, reason, last_fired_at"
                                        " FROM schedule_entries")
        self.assertEqual([tuple(r) for r in rows],
                         [("poller", "default", "poll", "exhausted", "one_shot_exhausted", when)])

    async def test_past_at_that_never_fired_fires_at_start(self) -> None:
        await self.restart(_config(at=self.START - 86400))
        self.assertEqual(await self._times(), [self.START])

    async def test_after_counts_from_first_start(self) -> None:
        """A restart before it fired keeps the first due time; after it fired, it is done."""
        config = _config(after=600.0)
        first = await self.restart(config)
        await self.advance(first, 300)
        first.stop()
        second = await self.restart(config)
        await self.advance(second, 299)
        self.assertEqual(await self._jobs(), [])
        await self.advance(second, 1)
        self.assertEqual(await self._times(), [self.START + 600])
        second.stop()
        await self._finish_all()
        third = await self.restart(config)
        await self.advance(third, 3600)
        self.assertEqual(await self._times(), [self.START + 600])

    async def test_busy_one_shot_waits_a_tick(self) -> None:
        """A one-shot due while its command is still queued is tried again a tick later, not lost."""
        sched = self.scheduler(_config(Schedule(id="loop", every=3600.0), Schedule(id="once", after=5.0)))
        await sched.start()
        await self.advance(sched, 0)  # "loop" enqueues a poll
        await self.advance(sched, 5)  # "once" finds it queued
        self.assertEqual(len(await self._jobs()), 1)
        await self._finish_all()
        await self.advance(sched, 10)
        self.assertEqual(await self._times(), [self.START, self.START + 15])

    # -- windows -----------------------------------------------------------

    async def test_only_between_holds_until_the_window_opens(self) -> None:
        self.clock.advance(at(UTC, 2026, 5, 1, 7, 30) - self.clock.seconds())
        sched = self.scheduler(_config(every=3600.0, only_between=(9 * 60, 17 * 60), if_running="queue"))
        await sched.start()
        await self.advance_to(sched, at(UTC, 2026, 5, 1, 17, 30))
        self.assertEqual(await self._times(), [at(UTC, 2026, 5, 1, h) for h in range(9, 17)])

    async def test_not_on_in_zone(self) -> None:
        """2026-05-02 is a Saturday; weekends are skipped, Monday is read in Sydney."""
        sydney = ZoneInfo("Australia/Sydney")
        self.clock.advance(at(sydney, 2026, 5, 2, 12) - self.clock.seconds())
        sched = self.scheduler(_config(cron="0 12 * * *", timezone="Australia/Sydney", not_on=frozenset({0, 6})))
        await sched.start()
        await self.advance(sched, 0)
        self.assertEqual(sched.entries[0].next_at, at(sydney, 2026, 5, 4))
        await self.advance_to(sched, at(sydney, 2026, 5, 4, 0))
        self.assertEqual(await self._times(), [at(sydney, 2026, 5, 4, 0)])


class WindowTests(SynchronousTestCase):
    def test_next_allowed(self) -> None:
        night = Schedule(only_between=(22 * 60, 6 * 60))
        self.assertEqual(next_allowed(at(UTC, 2026, 5, 1, 23), night, UTC), at(UTC, 2026, 5, 1, 23))
        self.assertEqual(next_allowed(at(UTC, 2026, 5, 1, 5, 59, 59), night, UTC), at(UTC, 2026, 5, 1, 5, 59, 59))
        self.assertEqual(next_allowed(at(UTC, 2026, 5, 1, 6), night, UTC), at(UTC, 2026, 5, 1, 22))
        self.assertEqual(next_allowed(at(UTC, 2026, 5, 1, 6, 0, 30), night, UTC), at(UTC, 2026, 5, 1, 22))
        self.assertEqual(next_allowed(123.0, Schedule(), UTC), 123.0)

    def test_window_across_dst(self) -> None:
        """London springs forward at 01:00: a 01:30-03:00 window opens at the jump (02:00 BST)."""
        sched = Schedule(only_between=(90, 180))
        self.assertEqual(next_allowed(at(LONDON, 2026, 3, 28, 23), sched, LONDON), at(UTC, 2026, 3, 29, 1))
        sched = Schedule(only_between=(9 * 60, 10 * 60))
        self.assertEqual(next_allowed(at(LONDON, 2026, 3, 28, 12), sched, LONDON), at(LONDON, 2026, 3, 29, 9))
        self.assertEqual(next_allowed(at(LONDON, 2026, 10, 24, 12), sched, LONDON), at(LONDON, 2026, 10, 25, 9))

    def test_weekdays_and_window(self) -> None:
        """2026-05-01 is a Friday."""
        sched = Schedule(only_between=(9 * 60, 17 * 60), not_on=frozenset({0, 6}))
        self.assertEqual(next_allowed(at(UTC, 2026, 5, 1, 18), sched, UTC), at(UTC, 2026, 5, 4, 9))


    @settings(max_examples=400, deadline=None)
    @given(
        start=st.one_of(st.sampled_from([60, 75, 90, 120, 150, 180]), st.integers(0, 1439)),
        length=st.one_of(st.sampled_from([30, 60, 90, 600]), st.integers(1, 1439)),
        not_on=st.frozensets(st.integers(0, 6), max_size=3),
        zone=st.sampled_from([UTC, LONDON, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]),
        day=st.sampled_from([(2026, 3, 8), (2026, 3, 29), (2026, 4, 5), (2026, 10, 25), (2026, 11, 1)]),
        offset=st.one_of(st.integers(-30 * 3600, 0), st.integers(-2 * 86400, 2 * 86400)),
    )
    def test_next_allowed_matches_a_minute_walk(self, start, length, not_on, zone, day, offset) -> None:
        """The jumping search finds the same opening as walking minute by minute."""
        sched = Schedule(only_between=(start, (start + length) % 1440), not_on=not_on)

        def allowed(t: float) -> bool:
            local = datetime.fromtimestamp(t, zone)
            minute = local.hour * 60 + local.minute
            s, e = sched.only_between
            inside = s <= minute < e if s < e else (minute >= s or minute < e)
            return inside and (local.weekday() + 1) % 7 not in not_on

        t = at(UTC, *day) + offset + 0.5
        expected = t
        if not allowed(t):
            expected = (int(t) // 60 + 1) * 60
            while not allowed(expected):
                expected += 60
        self.assertEqual(next_allowed(t, sched, zone), expected)


class ScheduleConfigTests(SynchronousTestCase, ConfigDirMixin):
    def schedules(self, text: str):
        config = self.load(self.base_files(**{"config.yaml": "plugin_roots: [plugins]\nplugins:\n  backup:\n"
                                                             "    schedules:\n" + text}))
        return config.plugins["backup"].schedules, config.warnings

    def problems(self, text: str) -> list[str]:
        error = self.fails(self.base_files(**{"config.yaml": "plugin_roots: [plugins]\nplugins:\n  backup:\n"
                                                             "    schedules:\n" + text}))
        return list(error.problems)

    def test_triggers(self) -> None:
        schedules, warnings = self.schedules(
            '      - {id: c, cron: "0 2 * * MON-FRI", timezone: Europe/London}\n'
            '      - {id: a, at: "2026-05-03T10:00:00+10:00"}\n'
            "      - {id: u, at: 2026-05-03T00:00:00Z}\n"
            "      - {id: f, after: 90s, command: warm}\n"
            '      - {id: w, every: 1h, only_between: "22:00-06:00", not_on: [sat, Sunday, 1, 7]}\n'
        )
        c, a, u, f, w = schedules
        self.assertEqual((c.trigger, c.cron, c.timezone), ("cron", "0 2 * * MON-FRI", "Europe/London"))
        self.assertEqual((a.trigger, a.at), ("at", at(UTC, 2026, 5, 3)))
        self.assertEqual((u.trigger, u.at), ("at", at(UTC, 2026, 5, 3)))
        self.assertEqual((f.trigger, f.after, f.command), ("after", 90.0, "warm"))
        self.assertEqual((w.trigger, w.only_between, w.not_on), ("every", (22 * 60, 6 * 60), {6, 0, 1}))
        self.assertEqual(list(warnings), [])

    def test_bad_cron(self) -> None:
        self.assertEqual(self.problems('      - {cron: "61 * * * *"}\n'), [
            'config.yaml: plugins.backup.schedules[0].cron: "61 * * * *": minute 61 out of range 0-59',
        ])
        self.assertEqual(self.problems('      - {cron: "0 0 30 2 *"}\n      - {id: b, cron: 5}\n'), [
            'config.yaml: plugins.backup.schedules[0].cron: "0 0 30 2 *": never fires: day-of-month 30 does not'
            " occur in month 2",
            'config.yaml: plugins.backup.schedules[1].cron: 5: expected a cron expression such as "30 2 * * *"'
            " (a string)",
        ])

    def test_trigger_count(self) -> None:
        self.assertEqual(self.problems('      - {every: 1h, cron: "* * * * *"}\n      - {id: n, jitter: 1s}\n'), [
            "config.yaml: plugins.backup.schedules[0]: sets every and cron; expected exactly one of every, cron,"
            " at or after",
            "config.yaml: plugins.backup.schedules[1].every: is required (a duration such as 30s, 5m, 1h, 2d, 1w,"
            " or one of hourly, daily, weekly, monthly), unless the schedule sets cron:, at: or after:",
        ])

    def test_bad_values(self) -> None:
        problems = self.problems(
            '      - {cron: "0 * * * *", timezone: Mars/Olympus}\n'
            '      - {id: a, at: "tomorrow"}\n'
            "      - {id: b, at: 2026-05-03 10:00:00}\n"
            "      - {id: c, after: 0s}\n"
            '      - {id: d, every: 1h, only_between: "9-17"}\n'
            '      - {id: e, every: 1h, only_between: "09:00-09:00"}\n'
            "      - {id: f, every: 1h, not_on: [funday, 8]}\n"
            "      - {id: g, every: 1h, not_on: sat}\n"
            "      - {id: h, every: 1h, catch_up: always}\n"
        )
        self.assertEqual(problems, [
            'config.yaml: plugins.backup.schedules[0].timezone: unknown time zone "Mars/Olympus"; expected an'
            " IANA time zone name such as Europe/London, America/New_York or UTC",
            'config.yaml: plugins.backup.schedules[1].at: invalid value "tomorrow"; expected an RFC 3339 time such'
            " as 2026-05-03T10:00:00Z or 2026-05-03T20:00:00+10:00",
            'config.yaml: plugins.backup.schedules[2].at: invalid value "2026-05-03 10:00:00"; expected an RFC 3339'
            " time such as 2026-05-03T10:00:00Z or 2026-05-03T20:00:00+10:00 (with a zone offset)",
            'config.yaml: plugins.backup.schedules[3].after: invalid value "0s"; expected a positive a Go duration'
            " such as 250ms, 10s, 5m, 1h30m or 1.5h",
            'config.yaml: plugins.backup.schedules[4].only_between: invalid value "9-17"; expected "HH:MM-HH:MM"'
            " (24-hour local times, e.g. 08:00-18:00 or 22:00-06:00)",
            'config.yaml: plugins.backup.schedules[5].only_between: invalid value "09:00-09:00"; start and end must'
            ' differ; expected "HH:MM-HH:MM" (24-hour local times, e.g. 08:00-18:00 or 22:00-06:00)',
            'config.yaml: plugins.backup.schedules[6].not_on[0]: invalid value "funday"; expected a list of'
            " weekdays: names (mon, tuesday) or numbers 0-6 (7 is also Sunday)",
            "config.yaml: plugins.backup.schedules[6].not_on[1]: invalid value 8; expected a list of weekdays:"
            " names (mon, tuesday) or numbers 0-6 (7 is also Sunday)",
            'config.yaml: plugins.backup.schedules[7].not_on: invalid value "sat"; expected a list of weekdays:'
            " names (mon, tuesday) or numbers 0-6 (7 is also Sunday)",
            'config.yaml: plugins.backup.schedules[8].catch_up: invalid value "always"; expected skip, run_once'
            " or run_all",
        ])

    def test_warnings(self) -> None:
        schedules, warnings = self.schedules(
            '      - {cron: "0 * * * *", jitter: 30s, catch_up: run_once}\n'
            "      - {id: e, every: 1h, catch_up: run_all}\n"
        )
        self.assertEqual((schedules[0].jitter, schedules[0].catch_up), (0.0, "skip"))
        self.assertEqual(schedules[1].catch_up, "run_all")
        self.assertEqual(list(warnings), [
            "config.yaml: plugins.backup.schedules[0].jitter: applies only to every schedules (as in ductile-go);"
            " ignored for cron",
            "config.yaml: plugins.backup.schedules[0].catch_up: applies only to every schedules; ignored for cron",
        ])
