"""
The scenarios of C{reliability/run}.  Each builds its daemons in its own
directory, runs a bounded load with a fault, waits (bounded) for the system
to settle, and returns a L{Row} of figures plus the promises it broke.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from collections import defaultdict
from typing import Any, Callable

import attrs

from reliability.cluster import Daemon, HarnessError, Registry, Timeline, free_port, process_alive, strays, write_yaml
from reliability.faults import write_fault_plugins

SECRET = "reliability-shared-secret-5e7d"
TOKEN = "reliability-api-token-91c4"
LOCK_SECONDS = 15.0
TERMINAL = ("succeeded", "failed", "timed_out", "dead", "skipped")


@attrs.define
class Row:
    test: str
    sent: int = 0
    accepted: int = 0
    processed: int = 0
    duplicates: int = 0
    lost: int = 0
    server_errors: int = 0
    crashes: int = 0
    reruns: int = 0
    seconds: float = 0.0
    broken: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def promise(self, ok: bool, text: str) -> None:
        if not ok:
            self.broken.append(text)


def clean_exit(code: int | None) -> bool:
    """
    twistd's exit after a handled SIGTERM: Twisted re-raises the signal once
    the reactor has stopped (so the status says "terminated by SIGTERM"); 0
    from older Twisted.  C{None} means it had to be killed.
    """
    return code in (0, -signal.SIGTERM)


@attrs.define
class Options:
    events: int = 1000
    workdir: str = ""
    settle_timeout: float = 300.0
    down_seconds: float = 3.0
    abuse_requests: int = 10000


# -- configs --------------------------------------------------------------------


def _common(name: str, port: int, plugins: str) -> dict[str, Any]:
    return {
        "service": {"name": name, "max_workers": 4, "tick_interval": "60s"},
        "plugin_roots": [plugins],
        "api": {"enabled": True, "listen": f"127.0.0.1:{port}",
                "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}},
        "state": {"path": "./data/state.db"},
        "tokens": [{"name": "relay-lab-v1", "key": SECRET}],
    }


def lab_config(directory: str, port: int, plugins: str, records: str) -> str:
    config = _common("lab", port, plugins)
    config.update({
        "plugins": {"sink": {"config": {"record_file": records}, "parallelism": 4}},
        "remote_ingress": {"listen_path": "/ingest/peer", "require_key_id": True, "peers": [{
            "name": "home-primary", "secret_ref": "relay-lab-v1", "key_id": "v1", "accept": ["backup.ready"]}]},
        "pipelines": [{"name": "process-offsite-backup", "on": "backup.ready",
                       "steps": [{"id": "store", "uses": "sink"}]}],
    })
    write_yaml(os.path.join(directory, "config.yaml"), config)
    return directory


def home_config(directory: str, port: int, plugins: str, lab_port: int) -> str:
    config = _common("home-primary", port, plugins)
    config.update({
        "instances": [{"name": "lab", "base_url": f"http://127.0.0.1:{lab_port}",
                       "ingress_path": "/ingest/peer/home-primary", "secret_ref": "relay-lab-v1", "key_id": "v1",
                       "timeout": "5s", "allow": ["backup.ready"],
                       "retry": {"backoff_base": "200ms", "max_backoff": "2s", "max_attempts": 50}}],
        "pipelines": [{"name": "offsite", "on": "backup.ready",
                       "steps": [{"id": "relay", "relay": {"to": "lab", "event": "backup.ready"}}]}],
    })
    write_yaml(os.path.join(directory, "config.yaml"), config)
    return directory


# -- the relay pair -------------------------------------------------------------


class Pair:
    """home-primary relaying every C{offsite} trigger to lab, whose C{sink} records it."""

    def __init__(self, registry: Registry, base: str) -> None:
        from ductile.testing.plugins import write_recorder

        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "sink", commands=("handle",))
        self.records = os.path.join(base, "records.jsonl")
        lab_port, home_port = free_port(), free_port()
        self.lab = Daemon(registry, "lab", lab_config(os.path.join(base, "lab"), lab_port, plugins, self.records),
                          lab_port, TOKEN)
        self.home = Daemon(registry, "home-primary",
                           home_config(os.path.join(base, "home"), home_port, plugins, lab_port), home_port, TOKEN)
        self.acked: set[str] = set()
        self.api_5xx = 0
        self.trigger_retries = 0

    def start(self) -> None:
        self.lab.start()
        self.home.start()

    def trigger(self, event_id: str, timeline: Timeline, deadline: float) -> None:
        """POST the trigger until home answers 202 (a retry is deduplicated by the key)."""
        body = {"payload": {"archive_id": event_id}, "dedupe_key": f"stream:{event_id}"}
        while True:
            timeline.tick()
            try:
                status, answer = self.home.request("POST", "/pipeline/offsite", body, timeout=10.0)
            except (OSError, http.client.HTTPException):
                status, answer = 0, None
            if status == 202:
                self.acked.add(event_id)
                return
            if status >= 500:
                self.api_5xx += 1
            elif status not in (0,):
                raise HarnessError(f"trigger {event_id}: unexpected answer {status} {answer}")
            if time.monotonic() > deadline:
                raise HarnessError(f"trigger {event_id}: home-primary did not accept it in time")
            self.trigger_retries += 1
            time.sleep(0.05)

    def stream(self, count: int, timeline: Timeline, at: dict[int, Callable[[], None]], deadline: float) -> None:
        for i in range(count):
            if i in at:
                at[i]()
            self.trigger(f"evt-{i:05d}", timeline, deadline)
            self.home.check_alive()
            self.lab.check_alive()

    def settled(self) -> bool:
        if not (self.home.running() and self.lab.running()):
            return False
        home = self.home.query("SELECT COUNT(*) FROM job_queue WHERE status IN ('queued','running')")[0][0]
        relays = self.home.query("SELECT COUNT(*) FROM job_queue WHERE plugin='core.relay'")[0][0]
        lab = self.lab.query("SELECT COUNT(*) FROM job_queue WHERE status IN ('queued','running')")[0][0]
        return home == 0 and lab == 0 and relays >= len(self.acked)

    def progress(self) -> tuple[Any, ...]:
        """Something that changes while work is being done."""
        if not (self.home.running() and self.lab.running()):
            return ("down", time.monotonic())
        home = self.home.query("SELECT status, COUNT(*), MAX(attempt) FROM job_queue GROUP BY status")
        lab = self.lab.query("SELECT status, COUNT(*), MAX(attempt) FROM job_queue GROUP BY status")
        size = os.path.getsize(self.records) if os.path.exists(self.records) else 0
        return tuple(map(tuple, home)), tuple(map(tuple, lab)), size

    def settle(self, timeline: Timeline, timeout: float, stall: float = 45.0) -> str:
        """
        Wait until both queues are empty: C{"settled"}; or C{"stalled"} when
        nothing at all changed for C{stall} seconds; or C{"timeout"}.
        """
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            timeline.tick()
            self.home.check_alive()
            self.lab.check_alive()
            if not timeline.pending() and self.settled():
                return "settled"
            now = self.progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall and not timeline.pending():
                return "stalled"
            time.sleep(0.25)
        return "timeout"

    def stuck(self, row: Row) -> None:
        for daemon in (self.home, self.lab):
            rows = daemon.query("SELECT status, COUNT(*) FROM job_queue WHERE status IN ('queued','running') "
                                "GROUP BY status")
            if rows:
                row.notes.append(f"{daemon.name} unfinished jobs: " + ", ".join(f"{r[0]}={r[1]}" for r in rows))

    def figures(self, row: Row) -> None:
        """Fill C{row} from both databases and the sink's records (daemons stopped)."""
        relays = self.home.query("SELECT payload, status FROM job_queue WHERE plugin='core.relay'")
        committed: dict[str, list[str]] = defaultdict(list)
        for r in relays:
            committed[json.loads(r["payload"])["payload"]["archive_id"]].append(r["status"])
        row.sent = len(committed)
        row.promise(self.acked <= set(committed),
                    f"{len(self.acked - set(committed))} triggers answered 202 by home-primary are not in its queue")
        not_delivered = sum(1 for statuses in committed.values() if "succeeded" not in statuses)
        row.promise(not_delivered == 0, f"{not_delivered} committed events have no succeeded delivery on the sender")
        dup_relays = sum(1 for statuses in committed.values() if len(statuses) > 1)
        row.promise(dup_relays == 0, f"{dup_relays} events have more than one relay job on the sender")
        row.server_errors += self.home.query(
            "SELECT COUNT(*) FROM relay_attempts WHERE status_code >= 500")[0][0] + self.api_5xx

        jobs: dict[str, set[str]] = defaultdict(set)
        for r in self.lab.query("SELECT id, payload FROM job_queue WHERE plugin='sink'"):
            jobs[json.loads(r["payload"])["payload"]["archive_id"]].add(r["id"])
        row.accepted = len(jobs)
        records = []
        if os.path.exists(self.records):
            with open(self.records) as f:
                records = [json.loads(line) for line in f if line.strip()]
        by_event: dict[str, set[str]] = defaultdict(set)
        runs: dict[str, int] = defaultdict(int)
        for rec in records:
            by_event[rec["event"]["payload"]["archive_id"]].add(rec["job_id"])
            runs[rec["job_id"]] += 1
        row.processed = len(by_event)
        row.duplicates = sum(1 for ids in jobs.values() if len(ids) > 1) + sum(
            1 for e, ids in by_event.items() if len(ids) > 1 and len(jobs.get(e, ())) <= 1)
        row.reruns = sum(n - 1 for n in runs.values())
        row.lost = len(set(committed) - set(by_event))
        row.promise(row.accepted == row.sent, f"receiver accepted {row.accepted} of {row.sent} committed events")
        row.promise(row.lost == 0, f"{row.lost} committed events never processed on the receiver")
        row.promise(row.duplicates == 0, f"{row.duplicates} events processed by more than one receiver job")
        not_ok = self.lab.query("SELECT COUNT(*) FROM job_queue WHERE plugin='sink' AND status!='succeeded'")[0][0]
        row.promise(not_ok == 0, f"{not_ok} receiver jobs did not succeed")
        if self.trigger_retries:
            row.notes.append(f"{self.trigger_retries} trigger POSTs retried")

    def crashes(self, row: Row) -> None:
        for daemon in (self.home, self.lab):
            daemon.check_alive()
            text = daemon.log_text()
            unhandled = text.count("Unhandled Error") + text.count("Unhandled error in Deferred")
            row.crashes += daemon.unexpected_exits + unhandled
            tracebacks = text.count("Traceback (most recent call last)")
            if tracebacks:
                row.notes.append(f"{daemon.name}: {tracebacks} tracebacks logged")

    def stop(self) -> None:
        for daemon in (self.home, self.lab):
            if daemon.running():
                code, _ = daemon.terminate()
                if not clean_exit(code):
                    raise HarnessError(f"{daemon.name} did not stop cleanly (exit {code})")


def _stream_scenario(name: str, options: Options, registry: Registry,
                     faults: Callable[[Pair, Timeline, int], dict[int, Callable[[], None]]],
                     extra: Callable[[Pair, Row], None] | None = None) -> Row:
    row = Row(name)
    began = time.monotonic()
    pair = Pair(registry, os.path.join(options.workdir, name))
    timeline = Timeline()
    try:
        pair.start()
        at = faults(pair, timeline, options.events)
        deadline = time.monotonic() + options.settle_timeout
        pair.stream(options.events, timeline, at, deadline)
        state = pair.settle(timeline, max(10.0, deadline - time.monotonic()))
        if state != "settled":
            pair.stuck(row)
        row.promise(state == "settled", "the system never settled: " + (
            "nothing changed for 45s with work still queued or running" if state == "stalled"
            else f"not done within {options.settle_timeout:g}s"))
        pair.crashes(row)
        pair.stop()
        pair.figures(row)
        if extra is not None:
            extra(pair, row)
    finally:
        row.seconds = time.monotonic() - began
    return row


def _restart_later(pair: Pair, daemon: Daemon, timeline: Timeline, delay: float, label: str) -> None:
    timeline.at(delay, f"restart {label}", daemon.start)


def receiver_kill(options: Options, registry: Registry) -> Row:
    """kill -9 the receiver a third of the way in; restart it a few seconds later."""

    def faults(pair: Pair, timeline: Timeline, n: int) -> dict[int, Callable[[], None]]:
        def kill() -> None:
            pair.lab.kill9()
            _restart_later(pair, pair.lab, timeline, options.down_seconds, "lab")

        return {n // 3: kill}

    return _stream_scenario("receiver-kill-9", options, registry, faults)


def sender_kill(options: Options, registry: Registry) -> Row:
    """kill -9 the sender a third of the way in (relays in flight); restart it."""

    def faults(pair: Pair, timeline: Timeline, n: int) -> dict[int, Callable[[], None]]:
        def kill() -> None:
            pair.home.kill9()
            _restart_later(pair, pair.home, timeline, options.down_seconds, "home-primary")

        return {n // 3: kill}

    def extra(pair: Pair, row: Row) -> None:
        recovered = len(re.findall(r"crash recovery: job", pair.home.log_text()))
        row.notes.append(f"sender recovered {recovered} interrupted jobs")

    return _stream_scenario("sender-kill-9", options, registry, faults, extra)


def receiver_db_locked(options: Options, registry: Registry) -> Row:
    """
    Another process holds the receiver's database write lock for 15 s (three
    times its busy timeout) a third
    of the way in (as a backup tool or a stuck CLI would): ingress must answer
    503 (or the sender time out) rather than 202, and everything must still
    be delivered once, with no job left stuck.
    """
    import sqlite3

    held: list[sqlite3.Connection] = []

    def faults(pair: Pair, timeline: Timeline, n: int) -> dict[int, Callable[[], None]]:
        def lock() -> None:
            conn = sqlite3.connect(os.path.join(pair.lab.config_dir, "data", "state.db"), timeout=10,
                                   isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            held.append(conn)

            def release() -> None:
                conn.execute("ROLLBACK")
                conn.close()

            timeline.at(LOCK_SECONDS, "release the lock", release)

        return {n // 3: lock}

    def extra(pair: Pair, row: Row) -> None:
        answers = pair.home.query("SELECT status_code, COUNT(*) FROM relay_attempts WHERE outcome != 'accepted' "
                                  "GROUP BY status_code")
        row.notes.append("sender's failed attempts by status: " +
                         (", ".join(f"{r[0] or 'no answer'}: {r[1]}" for r in answers) or "none"))
        crashed = pair.lab.log_text().count("crashed in the executor")
        row.promise(crashed == 0, f"lab: {crashed} jobs 'crashed in the executor' while the database was locked")

    return _stream_scenario("receiver-db-locked", options, registry, faults, extra)


def graceful(options: Options, registry: Registry) -> Row:
    """SIGTERM the receiver, then the sender, under load; each must stop cleanly and lose nothing."""
    stops: list[tuple[str, int | None, float]] = []

    def faults(pair: Pair, timeline: Timeline, n: int) -> dict[int, Callable[[], None]]:
        def stop(daemon: Daemon) -> Callable[[], None]:
            def act() -> None:
                code, seconds = daemon.terminate()
                stops.append((daemon.name, code, seconds))
                _restart_later(pair, daemon, timeline, 1.0, daemon.name)

            return act

        return {n // 4: stop(pair.lab), n // 2: stop(pair.home)}

    def extra(pair: Pair, row: Row) -> None:
        for name, code, seconds in stops:
            row.promise(clean_exit(code), f"{name} exited with {code} on SIGTERM")
            row.promise(seconds < 20, f"{name} took {seconds:.1f}s to stop")
            row.notes.append(f"{name} stopped in {seconds:.1f}s (exit {code})")
        for daemon in (pair.home, pair.lab):
            recovered = len(re.findall(r"crash recovery: job", daemon.log_text()))
            row.promise(recovered == 0, f"{daemon.name}: {recovered} jobs were left running by a graceful stop")
        # DuctileService promises to "let running plugins finish within their
        # grace" on stop: no plugin run is cut short, no attempt is spent.
        interrupted = pair.lab.query(
            "SELECT COUNT(*) FROM job_log WHERE status='failed' AND last_error LIKE '%shutting down%'")[0][0]
        if interrupted:
            row.notes.append(f"lab: {interrupted} plugin runs cut short by the graceful stop and retried after backoff")
        row.promise(interrupted == 0, f"the graceful stop of lab interrupted {interrupted} plugin runs, each "
                                      f"spending an attempt (a max_attempts=1 job would end failed)")
        row.promise(row.reruns == 0, f"{row.reruns} receiver jobs ran their plugin twice after a graceful stop")

    return _stream_scenario("graceful-sigterm", options, registry, faults, extra)


# -- plugin faults --------------------------------------------------------------

#: fault plugin -> (final status, attempts, words in last_error)
EXPECTED_FAULTS = {
    "hang": ("timed_out", 2, "timed out after 2s"),
    "fork-hang": ("timed_out", 2, "timed out after 2s"),
    "orphan-holds-stdout": ("succeeded", 1, ""),
    "flood": ("failed", 2, "stdout exceeded"),
    "exit-78": ("failed", 1, "code 78"),
    "garbage": ("failed", 2, "invalid plugin response"),
}


def plugin_faults(options: Options, registry: Registry) -> Row:
    """Each misbehaving plugin ends in its state in bounded time; the service keeps serving."""
    from ductile.testing.plugins import write_recorder

    row = Row("plugin-faults")
    began = time.monotonic()
    base = os.path.join(options.workdir, "plugin-faults")
    plugins = os.path.join(base, "plugins")
    pid_dir = os.path.join(base, "pids")
    os.makedirs(pid_dir, exist_ok=True)
    names = write_fault_plugins(plugins)
    write_recorder(plugins, "sink", commands=("handle",))
    records = os.path.join(base, "records.jsonl")
    port = free_port()
    config = _common("faults", port, plugins)
    config["plugins"] = {name: {"config": {"pid_dir": pid_dir}, "timeouts": {"handle": "2s"},
                                "retry": {"max_attempts": 2, "backoff_base": "100ms"}} for name in names}
    # Longer than the runner's 5 s linger grace, so the linger path decides.
    config["plugins"]["orphan-holds-stdout"]["timeouts"] = {"handle": "10s"}
    config["plugins"]["sink"] = {"config": {"record_file": records}}
    directory = os.path.join(base, "faults")
    write_yaml(os.path.join(directory, "config.yaml"), config)
    daemon = Daemon(registry, "faults", directory, port, TOKEN)
    try:
        daemon.start()
        jobs: dict[str, str] = {}
        for name in names:
            status, body = daemon.request("POST", f"/plugin/{name}/handle", {"payload": {"n": 1}})
            if status != 202:
                raise HarnessError(f"{name}: trigger answered {status} {body}")
            jobs[name] = body["job_id"]
        row.sent = len(jobs)
        # Bound: 2 attempts x (2s timeout + 5s kill grace) + backoff + slack.
        deadline = time.monotonic() + 45.0
        final: dict[str, dict[str, Any]] = {}
        while len(final) < len(jobs) and time.monotonic() < deadline:
            daemon.check_alive()
            status, health = daemon.request("GET", "/healthz")
            row.promise(status == 200, f"/healthz answered {status} during the faults")
            for name, job_id in jobs.items():
                if name in final:
                    continue
                status, job = daemon.request("GET", f"/job/{job_id}")
                if status >= 500:
                    row.server_errors += 1
                if status == 200 and job["status"] in TERMINAL:
                    final[name] = job
            time.sleep(0.25)
        row.accepted = len(jobs)
        for name, (want, attempts, words) in EXPECTED_FAULTS.items():
            job = final.get(name)
            if job is None:
                row.broken.append(f"{name}: job not finished within the bound")
                continue
            got = (job["status"], job["attempt"])
            row.promise(got == (want, attempts) and words in (job["last_error"] or ""),
                        f"{name}: ended {got} {job['last_error']!r}, expected ({want!r}, {attempts}) with {words!r}")
            row.notes.append(f"{name}: {job['status']} after {job['attempt']} attempt(s)")
        row.processed = len(final)
        # Still serving: a normal job right after.
        status, body = daemon.request("POST", "/plugin/sink/handle", {"payload": {"n": 2}})
        row.promise(status == 202, f"sink trigger after the faults answered {status}")
        if status == 202:
            ok_deadline = time.monotonic() + 20
            job = None
            while time.monotonic() < ok_deadline:
                _, job = daemon.request("GET", f"/job/{body['job_id']}")
                if job and job["status"] in TERMINAL:
                    break
                time.sleep(0.1)
            row.promise(bool(job) and job["status"] == "succeeded", f"sink job after the faults: {job}")
        leftovers = []
        for entry in os.listdir(pid_dir):
            pid = int(entry.rsplit("-", 1)[1])
            if process_alive(pid):
                leftovers.append(entry)
        row.promise(not leftovers, f"plugin processes outlived their jobs: {sorted(leftovers)}")
        row.crashes += daemon.unexpected_exits + daemon.log_text().count("Unhandled Error")
        code, _ = daemon.terminate()
        row.promise(clean_exit(code) and "faults stopped" in daemon.log_text(),
                    f"faults instance exited with {code} on SIGTERM")
        row.promise(not strays(base), "processes left behind after the instance stopped")
    finally:
        row.seconds = time.monotonic() - began
    return row


# -- captured-request replay ----------------------------------------------------


def replay_without_ids(options: Options, registry: Registry) -> Row:
    """
    A captured request of the form C{ductile relay send} writes (no
    C{origin.event_id}, no C{dedupe_key}) replayed inside the skew window.
    Promise: no second job.
    """
    from ductile.relay.signing import sign
    from ductile.timestamps import format_rfc3339nano

    row = Row("replay-captured-request")
    began = time.monotonic()
    pair = Pair(registry, os.path.join(options.workdir, "replay"))
    try:
        pair.lab.start()
        path = "/ingest/peer/home-primary"
        body = json.dumps({"event": {"type": "backup.ready", "payload": {"archive_id": "captured"}},
                           "origin": {"instance": "home-primary"}}).encode()
        ts = format_rfc3339nano(time.time())
        headers = {"Content-Type": "application/json", "X-Ductile-Peer": "home-primary",
                   "X-Ductile-Timestamp": ts, "X-Ductile-Key-Id": "v1",
                   "X-Ductile-Signature": sign(SECRET, "POST", path, ts, body), "Connection": "close"}
        answers = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", pair.lab.port, timeout=10)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read())))
            finally:
                conn.close()
        row.sent = 1
        row.accepted = sum(1 for status, _ in answers if status == 202)
        row.server_errors = sum(1 for status, _ in answers if status >= 500)
        jobs = {a.get("job_id") for status, a in answers if status == 202}
        row.duplicates = max(0, len(jobs) - 1)
        row.promise(len(jobs) <= 1, f"a captured request replayed twice within the skew window made "
                                    f"{len(jobs)} receiver jobs (no origin.event_id / dedupe_key to dedupe on)")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pair.lab.query("SELECT COUNT(*) FROM job_queue WHERE status IN ('queued','running')")[0][0] == 0:
                break
            time.sleep(0.1)
        if os.path.exists(pair.records):
            with open(pair.records) as f:
                row.processed = min(1, sum(1 for line in f if line.strip()))
        row.crashes = pair.lab.unexpected_exits
        pair.lab.terminate()
    finally:
        row.seconds = time.monotonic() - began
    return row


SCENARIOS: dict[str, Callable[[Options, Registry], Row]] = {
    "receiver-kill-9": receiver_kill,
    "sender-kill-9": sender_kill,
    "receiver-db-locked": receiver_db_locked,
    "graceful-sigterm": graceful,
    "plugin-faults": plugin_faults,
    "replay-captured-request": replay_without_ids,
}


def _slow_client(options: Options, registry: Registry) -> Row:
    from reliability.slow_client import slow_client

    return slow_client(options, registry)


def _abuse(options: Options, registry: Registry) -> Row:
    from reliability.abuse import abuse_storm

    return abuse_storm(options, registry)


SCENARIOS["slow-client"] = _slow_client
SCENARIOS["abuse-storm"] = _abuse
