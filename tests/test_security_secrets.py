"""
No secret ever leaks: the whole relay example runs with recognisable
secrets, and every place an operator or an attacker can read is searched for
them.

Two in-process instances on loopback (home-primary relays to lab), one good
delivery and one failing delivery (signed with a wrong secret), a failing
plugin on the receiver, C{config check} (text and JSON, good and broken
configs), C{relay check} and C{relay send}, every job-inspection API route and
the metrics route, authentication failures, and hostile relay requests.
Searched: every log event (formatted, every field's repr and every
traceback), every HTTP response's headers and body, all CLI output, and the
full text dump of both SQLite files (every table).

Also: the answers to an unknown peer and to a bad signature are the same
whatever secret the request was signed with, so they reveal nothing.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ductile.cli.main import build_parser, main
from ductile.cli.relay_cmd import run_check, run_send
from ductile.config import load_config
from ductile.config.models import RelayRetry
from ductile.relay.signing import sign
from ductile.testing.instance import port_of, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder
from ductile.timestamps import format_rfc3339nano
from tests.test_relay_ingress import exchange, raw_request

SECRET = "S3CRET-relay-zebra-4242"
WRONG_SECRET = "WR0NG-secret-owl-7777"
TOKEN = "T0KEN-api-yak-9999"
SECRETS = (SECRET, WRONG_SECRET, TOKEN)


class LeakHunt:
    """Everything readable, gathered as C{(where, text)}."""

    def __init__(self, testcase: TestCase) -> None:
        self.texts: list[tuple[str, str]] = []
        self.events = 0
        globalLogPublisher.addObserver(self.observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        self.events += 1
        parts = [formatEvent(event) or ""]
        for key, value in event.items():
            if key == "log_failure" and isinstance(value, Failure):
                parts.append(value.getTraceback())
            elif key not in ("log_logger", "log_source", "log_observer"):
                try:
                    parts.append(f"{key}={value!r}")
                except Exception as e:  # pragma: no cover - a broken repr is a finding too
                    parts.append(f"{key}=<repr failed: {e}>")
        self.texts.append(("log event", "\n".join(parts)))

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts.append((where, text))

    def add_database(self, path: str) -> None:
        conn = sqlite3.connect(path)
        try:
            dump = "\n".join(conn.iterdump())
        finally:
            conn.close()
        self.add(f"database {path}", dump)

    def leaks(self) -> list[str]:
        return [f"{secret!r} in {where}: ...{text[max(0, text.find(secret) - 200):text.find(secret) + 60]}..."
                for where, text in self.texts for secret in SECRETS if secret in text]


class SecretsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.hunt = LeakHunt(self)
        self.base = os.path.abspath(self.mktemp())
        self.plugins = os.path.join(self.base, "plugins")
        for name in ("backup-verifier", "cold-storage-sync"):
            write_recorder(self.plugins, name)
        self.records = os.path.join(self.base, "records.jsonl")

    def api(self) -> dict[str, Any]:
        return {"enabled": True, "listen": "127.0.0.1:0", "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}}

    def lab_dir(self) -> str:
        return write_config(os.path.join(self.base, "lab"), {"config.yaml": {
            "service": {"name": "lab"},
            "plugin_roots": [self.plugins],
            "plugins": {
                "backup-verifier": {"config": {"record_file": self.records, "emit": "backup.verified"}},
                # The second step fails: a failed job with its error in job_log.
                "cold-storage-sync": {"config": {"record_file": self.records, "fail": "permanent"}},
            },
            "api": self.api(),
            "state": {"path": "./data/state.db"},
            "tokens": [{"name": "relay-lab-v1", "key": SECRET}],
            "remote_ingress": {"listen_path": "/ingest/peer", "require_key_id": True, "peers": [{
                "name": "home-primary", "secret_ref": "relay-lab-v1", "key_id": "v1",
                "accept": ["backup.ready"], "baggage": {"allow": ["trace_id"]}}]},
            "pipelines": [{"name": "process-offsite-backup", "on": "backup.ready", "steps": [
                {"id": "verify-backup", "uses": "backup-verifier"},
                {"id": "store-backup", "uses": "cold-storage-sync"}]}],
        }})

    def home_dir(self, lab_port: int) -> str:
        def instance(name: str, ref: str) -> dict[str, Any]:
            return {"name": name, "base_url": f"http://127.0.0.1:{lab_port}",
                    "ingress_path": "/ingest/peer/home-primary", "secret_ref": ref, "key_id": "v1",
                    "timeout": "5s", "allow": ["backup.ready"],
                    "retry": {"max_attempts": 2, "backoff_base": "100ms", "max_backoff": "200ms"}}

        def relay_pipeline(name: str, to: str) -> dict[str, Any]:
            return {"name": name, "on": "backup.ready", "steps": [
                {"id": "relay", "relay": {"to": to, "event": "backup.ready",
                                          "baggage": {"trace_id": "context.trace_id"}}}]}

        return write_config(os.path.join(self.base, "home"), {"config.yaml": {
            "service": {"name": "home-primary"},
            "plugin_roots": [self.plugins],
            "api": self.api(),
            "state": {"path": "./data/state.db"},
            "tokens": [{"name": "relay-lab-v1", "key": SECRET}, {"name": "stale-key", "key": WRONG_SECRET}],
            "instances": [instance("lab", "relay-lab-v1"), instance("lab-stale", "stale-key")],
            "pipelines": [relay_pipeline("offsite", "lab"), relay_pipeline("offsite-stale", "lab-stale")],
        }})

    async def http(self, method: str, port: int, path: str, token: str | None = TOKEN,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await treq.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers,
                                      persistent=False)
        content = await response.content()
        self.hunt.add(f"{method} {path} headers", repr(list(response.headers.getAllRawHeaders())))
        self.hunt.add(f"{method} {path} body", content)
        if not content.strip():
            return response.code, None
        if response.headers.getRawHeaders("content-type", [""])[0].startswith("application/json"):
            return response.code, json.loads(content)
        return response.code, content.decode("utf-8", "replace")  # /metrics is Prometheus text

    async def done(self, service: Any) -> bool:
        counts = await service.queue.counts()
        return counts.get("queued", 0) + counts.get("running", 0) == 0 and sum(counts.values()) > 0

    def cli(self, argv: list[str]) -> int:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = main(argv)
        finally:
            self.patch(sys, "stdout", sys.__stdout__)
            self.patch(sys, "stderr", sys.__stderr__)
        self.hunt.add(f"ductile {' '.join(argv)} stdout", out.getvalue())
        self.hunt.add(f"ductile {' '.join(argv)} stderr", err.getvalue())
        return code

    async def test_whole_example_leaks_no_secret(self) -> None:
        lab_dir = self.lab_dir()
        lab = await start_instance(self, lab_dir, environ={})
        lab_port = port_of(lab)
        home_dir = self.home_dir(lab_port)
        home = await start_instance(self, home_dir, environ={})
        home_port = port_of(home)

        # A good delivery and one signed with a stale secret (403, dead).
        for pipeline, key in (("offsite", "a-1"), ("offsite-stale", "a-2")):
            code, body = await self.http("POST", home_port, f"/pipeline/{pipeline}", body={
                "payload": {"archive_id": key}, "baggage": {"trace_id": "tr-1"}})
            self.assertEqual(code, 202, body)
        await wait_until(home, lambda: self.done(home))
        await wait_until(lab, lambda: self.done(lab))
        statuses = sorted(j["status"] for j in await home.queue.list_jobs(limit=50))
        self.assertEqual(statuses, ["dead", "succeeded"])
        self.assertEqual(sorted(j["status"] for j in await lab.queue.list_jobs(limit=50)), ["failed", "succeeded"])

        # CLI: config check (text, JSON, a broken config), relay check, relay send.
        self.assertEqual(self.cli(["config", "check", "--config", lab_dir]), 0)
        self.assertEqual(self.cli(["config", "check", "--config", home_dir, "--json"]), 0)
        broken = write_config(os.path.join(self.base, "broken"), {"config.yaml": {
            "service": {"name": "home-primary"}, "tokens": [{"name": "k", "key": SECRET}],
            "instances": [{"name": "lab", "base_url": "nope", "ingress_path": "/x", "secret_ref": "k"},
                          {"name": "lab2", "base_url": "http://h", "ingress_path": "/x", "secret_ref": "missing"}],
        }})
        self.assertEqual(self.cli(["config", "check", "--config", broken]), 1)
        self.assertEqual(self.cli(["config", "check", "--config", broken, "--json"]), 1)

        home_config = load_config(home_dir, environ={})
        parser = build_parser()
        for name, expected in (("lab", 0), ("lab-stale", 1)):
            for extra in ([], ["--json"]):
                out = io.StringIO()
                code = await run_check(parser.parse_args(["relay", "check", name, *extra]), home_config, reactor,
                                       out=out)
                self.assertEqual(code, expected, out.getvalue())
                self.hunt.add(f"relay check {name} {extra}", out.getvalue())
        fast = RelayRetry(max_attempts=1, backoff_base=0.05, max_backoff=0.05)
        for name, expected in (("lab", 0), ("lab-stale", 1)):
            out, err = io.StringIO(), io.StringIO()
            args = parser.parse_args(["relay", "send", name, "--event", "backup.ready",
                                      "--payload", '{"archive_id": "cli-1"}', "--json"])
            code = await run_send(args, home_config, reactor, out=out, err=err, retry=fast)
            self.assertEqual(code, expected, err.getvalue())
            self.hunt.add(f"relay send {name} stdout", out.getvalue())
            self.hunt.add(f"relay send {name} stderr", err.getvalue())
        await wait_until(lab, lambda: self.done(lab))

        # Every inspection route, with a good token, no token and a bad one.
        for port, service in ((home_port, home), (lab_port, lab)):
            jobs = await service.queue.list_jobs(limit=50)
            paths = ["/healthz", "/jobs", "/jobs?limit=200", "/relay/deliveries", "/metrics"]
            for job in jobs:
                paths += [f"/job/{job['id']}", f"/job/{job['id']}/tree"]
            for path in paths:
                code, _ = await self.http("GET", port, path)
                self.assertLess(code, 500, path)
            for token in (None, "not-the-token", TOKEN[:-1]):
                code, body = await self.http("GET", port, "/jobs", token=token)
                self.assertEqual(code, 401, body)
        for job in await home.queue.list_jobs(plugin="core.relay", status="dead"):
            code, body = await self.http("POST", home_port, f"/relay/deliveries/{job['id']}/replay")
            self.assertEqual(code, 202, body)
        await wait_until(home, lambda: self.done(home))

        # Hostile requests at the receiver, signed with each secret in turn.
        ts = format_rfc3339nano(reactor.seconds())
        body = b'{"event":{"type":"backup.ready","payload":{}},"origin":{"instance":"home-primary"}}'
        for secret in SECRETS:
            for path in ("/ingest/peer/home-primary", "/ingest/peer/mallory"):
                headers = {"X-Ductile-Peer": path.rsplit("/", 1)[1], "X-Ductile-Timestamp": ts, "X-Ductile-Key-Id": "v1",
                           "X-Ductile-Signature": sign(secret, "POST", path, ts, body)}
                answer = await exchange(lab_port, raw_request(path, headers, body))
                self.hunt.add(f"relay {path} signed with a secret", answer.raw)

        await home.stopService()
        await lab.stopService()
        for service in (home, lab):
            self.hunt.add_database(service.config.state.path)

        self.assertGreater(self.hunt.events, 20)
        self.assertGreater(len(self.hunt.texts), 100)
        self.assertEqual(self.hunt.leaks(), [])


class OpaqueAnswersTests(TestCase):
    """Refusals that depend on the secret must not depend on which secret."""

    timeout = 30

    async def test_unknown_peer_and_bad_signature_reveal_nothing(self) -> None:
        from tests.test_reliability_abuse import NOW, Receiver, body_of

        receiver = Receiver(self)
        ts = format_rfc3339nano(NOW)
        body = body_of()

        async def answer(peer: str, secret: str, key_id: str = "v1") -> tuple[int, bytes, tuple[bytes, ...]]:
            path = f"/ingest/peer/{peer}"
            headers = {"X-Ductile-Peer": peer, "X-Ductile-Timestamp": ts, "X-Ductile-Key-Id": key_id,
                       "X-Ductile-Signature": sign(secret, "POST", path, ts, body)}
            r = await exchange(receiver.port, raw_request(path, headers, body))
            names = tuple(sorted(k for k in r.headers if k != b"date"))
            return r.status, r.body, names

        from tests.test_reliability_abuse import OTHER_SECRET, SECRET as LAB_SECRET

        unknown = {await answer("mallory", s) for s in (LAB_SECRET, OTHER_SECRET, "x", "z" * 64)}
        self.assertEqual(len(unknown), 1, unknown)
        [(status, text, _)] = unknown
        self.assertEqual((status, json.loads(text)), (403, {"error": "unknown relay peer"}))
        bad = {await answer("home-primary", s) for s in (OTHER_SECRET, LAB_SECRET[:-1], LAB_SECRET + "x", "y")}
        self.assertEqual(len(bad), 1, bad)
        [(status, text, _)] = bad
        self.assertEqual((status, json.loads(text)), (403, {"error": "forbidden"}))
        self.assertEqual(receiver.job_rows(), [])
