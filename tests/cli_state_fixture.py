"""
A populated state database and config dir for the inspection CLI tests,
built synchronously through the queue's own transaction bodies.
"""
from __future__ import annotations

import os
from typing import Any

from ductile.queue import Completion, JobQueue, JobSpec, RelayAttemptRecord, QUEUED, SUCCEEDED, DEAD
from ductile.store.pool import connect_blocking, prepare_database

BASE = 1_764_000_000.0
TOKEN = "tok-do-not-print-9f3a"
SLOTS = {"notify": 0}
STDERR = "\n".join(f"line {i}" for i in range(1, 31)) + "\n"


def write_config(base: str, state: str = "state.db", api: str = "") -> str:
    os.makedirs(os.path.join(base, "plugins"), exist_ok=True)
    with open(os.path.join(base, "config.yaml"), "w") as f:
        f.write(f"service:\n  name: alpha\nstate:\n  path: {state}\nplugin_roots:\n  - ./plugins\n{api}")
    return base


def api_section(listen: str, token: str = TOKEN, scopes: str = '["relay:rw"]') -> str:
    return (
        f"api:\n  enabled: true\n  listen: {listen}\n  auth:\n    tokens:\n"
        f"      - token: {token}\n        scopes: {scopes}\n"
    )


def relay_payload(to: str, key: str) -> dict[str, Any]:
    return {
        "type": "backup.ready", "payload": {"path": "/b/1"}, "source": "sched", "event_id": f"ev-{key}",
        "dedupe_key": key,
        "relay": {"to": to, "event_type": "backup.ready", "dedupe_key": key, "payload": {"path": "/b/1"},
                  "baggage": {}},
    }


def populate(path: str) -> dict[str, str]:
    """Create the jobs the tests inspect; returns their ids by role."""
    prepare_database(path)
    q = JobQueue(None, None, None)  # type: ignore[arg-type]
    conn = connect_blocking(path)
    cur = conn.cursor()
    ids: dict[str, str] = {}

    def txn(fn: Any) -> Any:
        cur.execute("BEGIN IMMEDIATE")
        out = fn(cur)
        cur.execute("COMMIT")
        return out

    def insert(spec: JobSpec, now: float) -> str:
        return txn(lambda c: q._insert(c, spec, now)).job_id

    def claim(now: float) -> Any:
        jobs = txn(lambda c: q._claim(c, 1, dict(SLOTS), None, now))
        assert len(jobs) == 1, jobs
        return jobs[0]

    def complete(job: Any, c: Completion, now: float) -> Any:
        return txn(lambda t: q._complete(t, job, c, now))

    # A plugin job: a failed attempt with long stderr, then success with a child.
    ids["echo"] = insert(
        JobSpec("echo", "handle", {"msg": "hi", "created_at": 5}, submitted_by="api", max_attempts=3,
                context={"owner": "ops", "ductile_pipeline": "p1"}, pipeline="p1", step_id="s1"),
        BASE + 100,
    )
    job = claim(BASE + 101)
    complete(job, Completion(QUEUED, error="exit status 2", stderr=STDERR, duration=0.25,
                             next_retry_at=BASE + 102), BASE + 101.5)
    job = claim(BASE + 103)
    results = complete(job, Completion(SUCCEEDED, result={"ok": True}, duration=1.5,
                                       successors=[JobSpec("notify", "handle", {"n": 1})]), BASE + 104)
    ids["child"] = results[0].job_id

    # A delivery that was retried, then died.
    ids["dead"] = insert(JobSpec("core.relay", "handle", relay_payload("beta", "k-dead"), max_attempts=3,
                                 dedupe_key="k-dead"), BASE + 200)
    job = claim(BASE + 201)
    complete(job, Completion(QUEUED, error="HTTP 503: busy", duration=0.1, next_retry_at=BASE + 210,
                             relay_attempt=RelayAttemptRecord("beta", "retryable", 503, "HTTP 503: busy", 0.1)),
             BASE + 201)
    job = claim(BASE + 211)
    complete(job, Completion(DEAD, error="HTTP 403: forbidden", duration=0.2,
                             relay_attempt=RelayAttemptRecord("beta", "permanent", 403, "HTTP 403: forbidden", 0.2)),
             BASE + 212)

    # A delivered one.
    ids["delivered"] = insert(JobSpec("core.relay", "handle", relay_payload("beta", "k-ok"), dedupe_key="k-ok"),
                              BASE + 300)
    job = claim(BASE + 301)
    complete(job, Completion(SUCCEEDED, duration=0.05,
                             result={"status": "relayed", "to": "beta", "event": "backup.ready",
                                     "accepted": {"receiver_event_id": "rev-1", "job_id": "rjob-1"}},
                             relay_attempt=RelayAttemptRecord("beta", "accepted", 202, "", 0.05)), BASE + 302)

    # One in flight, one waiting.
    ids["running"] = insert(JobSpec("core.relay", "handle", relay_payload("beta", "k-run"), dedupe_key="k-run"),
                            BASE + 400)
    claim(BASE + 401)
    ids["pending"] = insert(JobSpec("core.relay", "handle", relay_payload("gamma", "k-wait"), dedupe_key="k-wait"),
                            BASE + 500)
    conn.close()
    return ids


def make_state(testcase: Any, api: str = "") -> tuple[str, str, dict[str, str]]:
    """C{(config_dir, db_path, ids)} under the test's temp dir."""
    base = testcase.mktemp()
    os.makedirs(base)
    write_config(base, api=api)
    path = os.path.join(os.path.abspath(base), "state.db")
    return base, path, populate(path)
