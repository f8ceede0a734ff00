"""
C{ductile job list} / C{job inspect}: against a real state database built
through the queue's own transactions.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ductile.cli import deliveries, job_cmd
from ductile.queue import DEAD, QUEUED, SUCCEEDED, Completion, JobQueue, JobSpec, RelayAttemptRecord
from ductile.store.pool import connect_blocking, prepare_database

# -- a populated state database and config dir (shared with test_cli_deliveries),
# built synchronously through the queue's own transaction bodies.

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


def cli_parser() -> argparse.ArgumentParser:
    """The job noun and the relay verbs, as main.build_parser will register them."""
    parser = argparse.ArgumentParser(prog="ductile")
    nouns = parser.add_subparsers(dest="noun")
    job_cmd.register(nouns)
    relay = nouns.add_parser("relay").add_subparsers(dest="verb")
    deliveries.register_verbs(relay)
    return parser


def run_cli(*argv: str, **kw) -> tuple[int, str, str]:
    args = cli_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = args.handler(args, out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


class JobListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cfg, self.path, self.ids = make_state(self)

    def job(self, *argv: str) -> tuple[int, str, str]:
        return run_cli("job", *argv, "--config", self.cfg)

    def ids_in(self, out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines()[1:]]

    def test_table_newest_first(self) -> None:
        code, out, err = self.job("list")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "STATUS", "PLUGIN", "COMMAND", "ATTEMPT", "CREATED", "LAST", "ERROR"])
        ids = self.ids
        self.assertEqual(self.ids_in(out), [ids["pending"], ids["running"], ids["delivered"], ids["dead"],
                                            ids["child"], ids["echo"]])
        dead = next(line for line in lines if line.startswith(ids["dead"]))
        self.assertEqual(dead.split()[1:6], ["dead", "core.relay", "handle", "2/3", "2025-11-24T16:03:20Z"])
        self.assertTrue(dead.endswith("HTTP 403: forbidden"))

    def test_status_aliases(self) -> None:
        _, out, _ = self.job("list", "--status", "pending")
        self.assertEqual(self.ids_in(out), [self.ids["pending"], self.ids["child"]])
        _, out, _ = self.job("list", "--status", "ok")
        self.assertEqual(self.ids_in(out), [self.ids["delivered"], self.ids["echo"]])
        _, out, _ = self.job("list", "--status", "error")
        self.assertEqual(out, "no jobs\n")
        _, out, _ = self.job("list", "--status", "dead", "--status", "running")
        self.assertEqual(self.ids_in(out), [self.ids["running"], self.ids["dead"]])
        _, out, _ = self.job("list", "--status", "dead,ok")
        self.assertEqual(self.ids_in(out), [self.ids["delivered"], self.ids["dead"], self.ids["echo"]])

    def test_unknown_status(self) -> None:
        code, out, err = self.job("list", "--status", "bogus")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("ductile job list: unknown status 'bogus' (expected one of: queued, running", err)

    def test_plugin_and_limit(self) -> None:
        _, out, _ = self.job("list", "--plugin", "echo")
        self.assertEqual(self.ids_in(out), [self.ids["echo"]])
        _, out, _ = self.job("list", "--limit", "2")
        self.assertEqual(self.ids_in(out), [self.ids["pending"], self.ids["running"]])
        code, _, err = self.job("list", "--limit", "0")
        self.assertEqual((code, err), (1, "ductile job list: --limit must be 1 or more\n"))

    def test_json(self) -> None:
        code, out, _ = self.job("list", "--status", "dead", "--json")
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(data["total"], 1)
        job = data["jobs"][0]
        self.assertEqual(job["id"], self.ids["dead"])
        self.assertEqual(job["created_at"], "2025-11-24T16:03:20Z")
        self.assertEqual((job["attempt"], job["max_attempts"], job["last_error"]), (2, 3, "HTTP 403: forbidden"))

    def test_missing_database(self) -> None:
        base = self.mktemp()
        write_config(base, state="nowhere/state.db")
        path = os.path.join(os.path.abspath(base), "nowhere", "state.db")
        code, out, err = run_cli("job", "list", "--config", base)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"ductile job list: no state database at {path} (has the instance run yet?)\n")
        self.assertFalse(os.path.exists(path))

    def test_bad_config(self) -> None:
        code, _, err = run_cli("job", "list", "--config", os.path.join(self.mktemp(), "nope.yaml"))
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("ductile job list: "), err)
        self.assertIn("nope.yaml", err)

    def test_reads_while_a_writer_holds_the_lock(self) -> None:
        writer = connect_blocking(self.path)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE job_queue SET last_error='uncommitted' WHERE id=?", (self.ids["echo"],))
        code, out, _ = self.job("list", "--plugin", "echo")
        writer.execute("ROLLBACK")
        self.assertEqual(code, 0)
        self.assertNotIn("uncommitted", out)

    def test_inspect_parser_shape(self) -> None:
        # The parser built here is what main gains once the lead registers the nouns.
        parser = cli_parser()
        args = parser.parse_args(["job", "inspect", "abc", "--json"])
        self.assertEqual((args.job_id, args.json, args.config), ("abc", True, None))


class JobInspectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cfg, self.path, self.ids = make_state(self)

    def inspect(self, *argv: str) -> tuple[int, str, str]:
        return run_cli("job", "inspect", *argv, "--config", self.cfg)

    def test_plugin_job_everything(self) -> None:
        code, out, err = self.inspect(self.ids["echo"], "--stderr-lines", "3")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"Job {self.ids['echo']}\n  status:        succeeded\n  plugin:        echo\n", out)
        self.assertIn("  attempt:       2/3\n", out)
        self.assertIn('Payload:\n  {\n    "msg": "hi",\n    "created_at": 5\n  }', out)
        self.assertIn('Result:\n  {\n    "ok": true\n  }', out)
        self.assertIn(
            "  1: failed  250ms  at 2025-11-24T16:01:41Z  error: exit status 2\n"
            "    stderr (last 3 of 30 lines):\n      line 28\n      line 29\n      line 30\n"
            "  2: succeeded  1.50s  at 2025-11-24T16:01:44Z\n",
            out,
        )
        self.assertNotIn("line 27", out)
        self.assertIn(
            "Transitions:\n"
            "  2025-11-24T16:01:40Z  - -> queued  (enqueued)\n"
            "  2025-11-24T16:01:41Z  queued -> running  (attempt 1)\n"
            "  2025-11-24T16:01:41Z  running -> queued  (exit status 2)\n"
            "  2025-11-24T16:01:43Z  queued -> running  (attempt 2)\n"
            "  2025-11-24T16:01:44Z  running -> succeeded\n",
            out,
        )
        self.assertIn('Baggage:\n  {\n    "owner": "ops"\n  }\n', out)
        self.assertIn('Internal context:\n  {\n    "ductile_pipeline": "p1"\n  }\n', out)
        self.assertIn(f"Children:\n  {self.ids['child']}  queued  notify handle", out)
        self.assertNotIn("Relay:", out)

    def test_child_shows_parent(self) -> None:
        _, out, _ = self.inspect(self.ids["child"])
        self.assertIn(f"Parent:\n  {self.ids['echo']}  succeeded  echo handle\n", out)
        self.assertIn("Children:\n  (none)", out)
        self.assertIn("Attempts:\n  (none finished yet)", out)

    def test_json(self) -> None:
        code, out, _ = self.inspect(self.ids["echo"], "--json")
        self.assertEqual(code, 0)
        d = json.loads(out)
        self.assertEqual(d["payload"], {"msg": "hi", "created_at": 5})  # user data left alone
        self.assertEqual(d["created_at"], "2025-11-24T16:01:40Z")
        self.assertEqual(d["context"], {"baggage": {"owner": "ops"}, "internal": {"ductile_pipeline": "p1"}})
        self.assertEqual([a["status"] for a in d["attempts"]], ["failed", "succeeded"])
        self.assertEqual(d["attempts"][0]["stderr_lines"], 30)
        self.assertEqual(d["attempts"][0]["stderr_tail"].splitlines()[0], "line 11")  # default tail: 20 lines
        self.assertEqual([t["to"] for t in d["transitions"]], ["queued", "running", "queued", "running", "succeeded"])
        self.assertEqual(d["transitions"][0]["at"], "2025-11-24T16:01:40Z")
        self.assertEqual([c["id"] for c in d["children"]], [self.ids["child"]])
        self.assertIsNone(d["relay"])

    def test_dead_delivery(self) -> None:
        _, out, _ = self.inspect(self.ids["dead"])
        self.assertIn(
            "Relay:\n  to:            beta\n  event type:    backup.ready\n  delivery:      dead\n"
            "  dedupe key:    k-dead\n"
            "  attempt 1: retryable  HTTP 503  100ms  at 2025-11-24T16:03:21Z  error: HTTP 503: busy\n"
            "  attempt 2: permanent  HTTP 403  200ms  at 2025-11-24T16:03:32Z  error: HTTP 403: forbidden\n",
            out,
        )
        self.assertIn("  last error:    HTTP 403: forbidden\n", out)

    def test_delivered_shows_acceptance(self) -> None:
        _, out, _ = self.inspect(self.ids["delivered"])
        self.assertIn("  receiver event id: rev-1\n  receiver job id:   rjob-1\n", out)
        _, out, _ = self.inspect(self.ids["delivered"], "--json")
        relay = json.loads(out)["relay"]
        self.assertEqual(relay["accepted"], {"receiver_event_id": "rev-1", "job_id": "rjob-1"})
        self.assertEqual(relay["attempts"][0]["status_code"], 202)
        self.assertEqual(relay["state"], "delivered")

    def test_prefix(self) -> None:
        code, out, _ = self.inspect(self.ids["dead"][:6])
        self.assertEqual(code, 0)
        self.assertIn(f"Job {self.ids['dead']}\n", out)

    def test_short_prefix_not_accepted(self) -> None:
        code, out, err = self.inspect(self.ids["dead"][:5])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"ductile job inspect: job {self.ids['dead'][:5]} not found\n")

    def test_ambiguous_prefix(self) -> None:
        conn = sqlite3.connect(self.path)
        for suffix in ("1", "2"):
            conn.execute(
                "INSERT INTO job_queue (id, plugin, command, status, created_at) VALUES (?,?,?,?,?)",
                (f"abcdef-{suffix}", "echo", "poll", "queued", BASE),
            )
        conn.commit()
        conn.close()
        code, _, err = self.inspect("abcdef")
        self.assertEqual(code, 1)
        self.assertEqual(err, "ductile job inspect: job id prefix abcdef is ambiguous: it matches abcdef-1, abcdef-2\n")
        code, out, _ = self.inspect("abcdef-2")
        self.assertEqual(code, 0)
        self.assertIn("  command:       poll\n", out)

    def test_not_found(self) -> None:
        code, out, err = self.inspect("no-such-job-id")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "ductile job inspect: job no-such-job-id not found\n")


class ShownStatusTests(SynchronousTestCase):
    def test_a_job_claimed_ahead_is_told_apart(self) -> None:
        """Stored as running (Go's statuses), shown as not started yet."""
        self.assertEqual(job_cmd.shown_status({"status": "running", "started_at": None}),
                         "running (claimed, not started)")
        self.assertEqual(job_cmd.shown_status({"status": "running", "started_at": 5.0}), "running")
        self.assertEqual(job_cmd.shown_status({"status": "queued", "started_at": None}), "queued")
