"""
The receiver's database cannot take writes: the relay ingress must answer
503 with C{Retry-After} (never 202), enqueue nothing, and the sender must
keep retrying and deliver once the database recovers — processed once.

The fault is injected on the receiver's own single writer connection with
C{PRAGMA query_only=ON} (file modes do not stop root): every write then
fails inside SQLite with "attempt to write a readonly database", exactly as
a read-only file or a full disk would.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from ductile.errors import StorageUnavailable
from ductile.relay.signing import sign
from ductile.testing.instance import port_of, read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder
from ductile.timestamps import format_rfc3339nano
from tests.test_relay_ingress import exchange, raw_request

SECRET = "storage-test-secret-31d"
TOKEN = "storage-test-token"


class ReceiverStorageTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        plugins = os.path.join(self.base, "plugins")
        write_recorder(plugins, "backup-verifier")
        self.records = os.path.join(self.base, "records.jsonl")
        self.plugins = plugins

    def common(self, name: str) -> dict[str, Any]:
        return {
            "service": {"name": name},
            "plugin_roots": [self.plugins],
            "api": {"enabled": True, "listen": "127.0.0.1:0",
                    "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}},
            "state": {"path": "./data/state.db"},
            "tokens": [{"name": "relay-lab-v1", "key": SECRET}],
        }

    def lab_dir(self) -> str:
        config = self.common("lab")
        config.update({
            "plugins": {"backup-verifier": {"config": {"record_file": self.records}}},
            "remote_ingress": {"peers": [{"name": "home-primary", "secret_ref": "relay-lab-v1",
                                          "accept": ["backup.ready"]}]},
            "pipelines": [{"name": "process-offsite-backup", "on": "backup.ready",
                           "steps": [{"id": "verify-backup", "uses": "backup-verifier"}]}],
        })
        return write_config(os.path.join(self.base, "lab"), {"config.yaml": config})

    def home_dir(self, lab_port: int) -> str:
        config = self.common("home-primary")
        config.update({
            "instances": [{"name": "lab", "base_url": f"http://127.0.0.1:{lab_port}",
                           "ingress_path": "/ingest/peer/home-primary", "secret_ref": "relay-lab-v1",
                           "timeout": "5s",
                           "retry": {"max_attempts": 50, "backoff_base": "100ms", "max_backoff": "300ms"}}],
            "pipelines": [{"name": "offsite", "on": "backup.ready",
                           "steps": [{"id": "relay", "relay": {"to": "lab", "event": "backup.ready"}}]}],
        })
        return write_config(os.path.join(self.base, "home"), {"config.yaml": config})

    def rows(self, service: Any) -> int:
        conn = sqlite3.connect(service.config.state.path)
        try:
            return conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0]
        finally:
            conn.close()

    async def test_503_while_unavailable_then_delivered_once(self) -> None:
        lab = await start_instance(self, self.lab_dir(), environ={})
        home = await start_instance(self, self.home_dir(port_of(lab)), environ={})
        await lab.pool.runOperation("PRAGMA query_only=ON")

        # A direct, correctly signed relay: 503 + Retry-After, nothing stored.
        path = "/ingest/peer/home-primary"
        body = json.dumps({"event": {"type": "backup.ready", "payload": {"archive_id": "direct"}},
                           "origin": {"instance": "home-primary", "event_id": "evt-direct"}}).encode()
        ts = format_rfc3339nano(reactor.seconds())
        headers = {"X-Ductile-Peer": "home-primary", "X-Ductile-Timestamp": ts,
                   "X-Ductile-Signature": sign(SECRET, "POST", path, ts, body)}
        answer = await exchange(port_of(lab), raw_request(path, headers, body))
        self.assertEqual((answer.status, answer.json()), (503, {"error": "relay receiver storage unavailable"}))
        self.assertEqual(answer.header("retry-after"), b"5")
        self.assertEqual(self.rows(lab), 0)
        self.assertEqual(lab.ingress_stats.accepted, 0)

        # A pipeline relay from home: retried on 503 while the fault lasts.
        response = await treq.post(f"http://127.0.0.1:{port_of(home)}/pipeline/offsite",
                                   json={"payload": {"archive_id": "piped"}},
                                   headers={"Authorization": f"Bearer {TOKEN}"}, persistent=False)
        self.assertEqual(response.code, 202, await response.text())

        async def retried_three_times() -> Any:
            [job] = await home.queue.list_jobs(plugin="core.relay")
            attempts = await home.queue.relay_attempts(job["id"])
            return attempts if len(attempts) >= 3 else None

        attempts = await wait_until(home, retried_three_times)
        self.assertEqual({(a["outcome"], a["status_code"]) for a in attempts}, {("retryable", 503)})
        self.assertEqual(attempts[0]["error"], "relay receiver rejected request: relay receiver storage unavailable")
        self.assertEqual(self.rows(lab), 0)
        self.assertEqual(lab.ingress_stats.accepted, 0)
        self.assertGreaterEqual(lab.ingress_stats.rejected["storage_unavailable"], 4)

        await lab.pool.runOperation("PRAGMA query_only=OFF")

        async def delivered() -> Any:
            [job] = await home.queue.list_jobs(plugin="core.relay")
            return job if job["status"] == "succeeded" else None

        job = await wait_until(home, delivered)
        receiver_job = job["result"]["accepted"]["job_id"]

        async def processed() -> Any:
            found = await lab.queue.get_job(receiver_job)
            return found if found and found["status"] == "succeeded" else None

        await wait_until(lab, processed)
        records = read_records(self.records)
        self.assertEqual([r["event"]["payload"]["archive_id"] for r in records], ["piped"])
        self.assertEqual(self.rows(lab), 1)
        self.assertEqual(lab.ingress_stats.accepted, 1)
        # The storage errors were answered, not crashed on.
        self.assertEqual(self.flushLoggedErrors(StorageUnavailable), [])
