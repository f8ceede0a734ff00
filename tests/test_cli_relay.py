"""
C{ductile relay send} / C{ductile relay check} through run_send / run_check,
against the stub receiver on real loopback.
"""
from __future__ import annotations

import argparse
import io
import json
import re
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from ductile.cli.relay_cmd import register, run_check, run_send
from ductile.config.models import Config, Instance, RelayRetry, ServiceConfig

from .test_relay_sender_stub import Served, StubReceiver, refused_url, sequence

SECRET = "s3cret-value"
FAST = RelayRetry(max_attempts=3, backoff_base=0.2, max_backoff=0.5)

SEED_ARGV = [
    "relay",
    "send",
    "lab",
    "--event",
    "backup.ready",
    "--payload",
    '{"archive_path":"/srv/backups/latest.tar.zst","archive_id":"nightly-2026-05-03"}',
    "--dedupe-key",
    "backup.ready:nightly-2026-05-03",
    "--origin-plugin",
    "backup-runner",
    "--origin-job-id",
    "job-123",
    "--origin-event-id",
    "evt-456",
    "--baggage",
    '{"trace_id":"tr-789"}',
]

SEED_WIRE = {
    "event": {
        "type": "backup.ready",
        "payload": {
            "archive_path": "/srv/backups/latest.tar.zst",
            "archive_id": "nightly-2026-05-03",
        },
        "dedupe_key": "backup.ready:nightly-2026-05-03",
    },
    "origin": {
        "instance": "home-primary",
        "plugin": "backup-runner",
        "job_id": "job-123",
        "event_id": "evt-456",
    },
    "baggage": {"trace_id": "tr-789"},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ductile")
    nouns = p.add_subparsers(dest="noun")
    register(nouns)
    return p


def parse(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def config(base_url: str, service: str = "home-primary", **kw: Any) -> Config:
    fields: dict[str, Any] = dict(
        name="lab",
        base_url=base_url,
        ingress_path="/ingest/peer/home-primary",
        secret_ref="relay-lab-v1",
        secret=SECRET,
        key_id="v1",
        timeout=5.0,
    )
    fields.update(kw)
    return Config(
        config_file="/nonexistent/config.yaml",
        config_dir="/nonexistent",
        service=ServiceConfig(name=service),
        instances=(Instance(**fields),),
    )


class ParseTests(unittest.SynchronousTestCase):
    def test_seed_line_parses(self) -> None:
        args = parse(*SEED_ARGV)
        self.assertEqual(
            (args.instance, args.event, args.dedupe_key, args.origin_plugin, args.retries, args.json),
            ("lab", "backup.ready", "backup.ready:nightly-2026-05-03", "backup-runner", 2, False),
        )

    def test_instance_after_flags(self) -> None:
        args = parse("relay", "send", "--event", "backup.ready", "--retries", "0", "lab", "--json")
        self.assertEqual((args.instance, args.event, args.retries, args.json), ("lab", "backup.ready", 0, True))

    def test_event_required(self) -> None:
        err = io.StringIO()
        import contextlib

        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as cm:
            parse("relay", "send", "lab")
        self.assertEqual(cm.exception.code, 2)
        self.assertIn("--event", err.getvalue())

    def test_check_parses(self) -> None:
        args = parse("relay", "check", "--json", "lab")
        self.assertEqual((args.instance, args.json), ("lab", True))


class SendTests(unittest.TestCase):
    timeout = 20

    async def send(self, cfg: Config, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await run_send(parse(*argv), cfg, reactor, out=out, err=err, retry=FAST, rng=lambda: 0.0)
        self.assertNotIn(SECRET, out.getvalue() + err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def serve(self, stub: StubReceiver) -> Served:
        return Served(self, stub)

    async def test_seed_example_wire_shape_and_output(self) -> None:
        stub = StubReceiver(key_id="v1", require_key_id=True)
        srv = self.serve(stub)
        code, out, err = await self.send(config(srv.base_url), *SEED_ARGV)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out, "Relayed backup.ready to lab\nReceiver event id: rev-1\nReceiver job id: rjob-1\n"
        )
        self.assertEqual(len(stub.received), 1)
        self.assertEqual(stub.received[0].json(), SEED_WIRE)
        self.assertEqual(stub.verified, [True])
        self.assertEqual(stub.received[0].header("x-ductile-key-id"), "v1")

    async def test_json_output_and_no_job_id(self) -> None:
        body = {"status": "accepted", "peer": "home-primary", "event_type": "a.b", "receiver_event_id": "e9"}
        stub = StubReceiver(mode="fixed", answer=(202, {}, json.dumps(body).encode()))
        srv = self.serve(stub)
        code, out, _ = await self.send(config(srv.base_url), "relay", "send", "--event", "a.b", "lab", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(out, json.dumps(body, indent=2) + "\n")
        self.assertEqual(without_minted_event_id(stub.received[0].json()),
                         {"event": {"type": "a.b", "payload": {}}, "origin": {"instance": "home-primary"}})

        code, out, _ = await self.send(config(srv.base_url), "relay", "send", "lab", "--event", "a.b")
        self.assertEqual(out, "Relayed a.b to lab\nReceiver event id: e9\n")

    async def test_permanent_failure_stops_at_once(self) -> None:
        stub = StubReceiver(secret="different")
        srv = self.serve(stub)
        code, out, err = await self.send(config(srv.base_url), "relay", "send", "lab", "--event", "backup.ready")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "ductile relay send: relay receiver rejected request: forbidden\n")
        self.assertEqual(len(stub.received), 1)

    async def test_retryable_then_success(self) -> None:
        stub = StubReceiver(
            mode=sequence(
                (503, {}, b'{"error":"busy"}'),
                (202, {}, b'{"receiver_event_id":"e2","job_id":"j2"}'),
            )
        )
        srv = self.serve(stub)
        code, out, err = await self.send(config(srv.base_url), "relay", "send", "lab", "--event", "backup.ready")
        self.assertEqual(code, 0)
        self.assertEqual(
            err, "attempt 1 failed (retryable): relay receiver rejected request: busy; retrying in 0.2s\n"
        )
        self.assertEqual(out, "Relayed backup.ready to lab\nReceiver event id: e2\nReceiver job id: j2\n")
        self.assertEqual(len(stub.received), 2)
        ts = [r.header("x-ductile-timestamp") for r in stub.received]
        self.assertNotEqual(ts[0], ts[1])  # re-signed with a fresh timestamp

    async def test_retries_exhausted(self) -> None:
        stub = StubReceiver(mode="fixed", answer=(503, {"Retry-After": "0"}, b""))
        srv = self.serve(stub)
        code, _, err = await self.send(
            config(srv.base_url), "relay", "send", "lab", "--event", "backup.ready", "--retries", "1"
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "attempt 1 failed (retryable): relay receiver returned status 503; retrying in 0.2s\n"
            "attempt 2 failed (retryable): relay receiver returned status 503\n"
            "ductile relay send: giving up after 2 attempt(s): relay receiver returned status 503\n",
        )
        self.assertEqual(len(stub.received), 2)

    async def test_retry_budget_bounds_total_time(self) -> None:
        stub = StubReceiver(mode="fixed", answer=(429, {}, b""))
        srv = self.serve(stub)
        out, err = io.StringIO(), io.StringIO()
        args = parse("relay", "send", "lab", "--event", "backup.ready", "--retries", "50")
        code = await run_send(args, config(srv.base_url), reactor, out=out, err=err, retry=FAST, budget=0.3, rng=lambda: 0.0)
        self.assertEqual(code, 1)
        self.assertIn("giving up: next attempt would start after the 0.3s budget", err.getvalue())
        self.assertLess(len(stub.received), 5)

    async def test_receiver_down(self) -> None:
        code, _, err = await self.send(
            config(refused_url()), "relay", "send", "lab", "--event", "backup.ready", "--retries", "0"
        )
        self.assertEqual(code, 1)
        self.assertIn("ductile relay send: giving up after 1 attempt(s): deliver relay request to lab: ", err)
        self.assertIn("refused", err.lower())

    async def test_not_configured_and_not_allowed(self) -> None:
        code, _, err = await self.send(config("http://127.0.0.1:1"), "relay", "send", "vps", "--event", "x.y")
        self.assertEqual((code, err), (1, 'ductile relay send: relay instance "vps" not configured\n'))
        cfg = config("http://127.0.0.1:1", allow=("backup.ready",))
        code, _, err = await self.send(cfg, "relay", "send", "lab", "--event", "x.y")
        self.assertEqual(
            (code, err), (1, 'ductile relay send: relay instance "lab" does not allow event type "x.y"\n')
        )

    async def test_argument_validation(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('["not", "an", "object"]')
        good = self.mktemp()
        with open(good, "w") as f:
            f.write('{"from_file": true}')
        cfg = config("http://127.0.0.1:1")
        base = ("relay", "send", "lab", "--event", "backup.ready")
        cases = [
            (("--payload", "{}", "--payload-file", good), "use either --payload or --payload-file, not both"),
            (("--baggage", "{}", "--baggage-file", good), "use either --baggage or --baggage-file, not both"),
            (("--payload", "[1, 2]"), "--payload: must be a JSON object, got list"),
            (("--payload", "null"), "--payload: must be a JSON object, got null"),
            (("--baggage", '"x"'), "--baggage: must be a JSON object, got str"),
            (("--payload-file", path), f"--payload-file {path}: must be a JSON object, got list"),
            (("--baggage-file", path + ".missing"), f"--baggage-file {path}.missing: cannot read: No such file or directory"),
            (("--retries", "-1"), "--retries must be 0 or more"),
        ]
        for extra, message in cases:
            code, out, err = await self.send(cfg, *base, *extra)
            self.assertEqual((code, out, err), (1, "", f"ductile relay send: {message}\n"), extra)
        code, _, err = await self.send(cfg, *base, "--payload", "{nope")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("ductile relay send: --payload: not valid JSON: "), err)
        code, _, err = await self.send(cfg, "relay", "send", "lab", "--event", " ")
        self.assertEqual(err, "ductile relay send: --event must not be empty\n")

    async def test_payload_file_and_empty_values(self) -> None:
        good = self.mktemp()
        with open(good, "w") as f:
            f.write('{"from_file": true}')
        stub = StubReceiver(key_id="v1")
        srv = self.serve(stub)
        code, _, err = await self.send(
            config(srv.base_url), "relay", "send", "lab", "--event", "backup.ready",
            "--payload-file", good, "--baggage", "",
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            without_minted_event_id(stub.received[0].json()),
            {"event": {"type": "backup.ready", "payload": {"from_file": True}}, "origin": {"instance": "home-primary"}},
        )


def without_minted_event_id(wire: dict) -> dict:
    """
    Without --origin-event-id, relay send mints a UUID event id (so the
    receiver can dedupe retries and replays); check it and drop it.
    """
    import uuid

    event_id = wire["origin"].pop("event_id")
    uuid.UUID(event_id)
    return wire


def lines(text: str) -> dict[str, tuple[str, str]]:
    """Report lines keyed by item name -> (status, detail)."""
    out = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"^(ok|problem|unknown) +(api\.listen|ingress_path|service\.name|clock skew|key_id|shared secret|accept|instance|secret_ref|answer|base_url) +(.*)$", line)
        assert m, line
        out[m.group(2)] = (m.group(1), m.group(3))
    return out


class CheckTests(unittest.TestCase):
    timeout = 20

    async def check(self, cfg: Config, *extra: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await run_check(parse("relay", "check", "lab", *extra), cfg, reactor, out=out)
        self.assertNotIn(SECRET, out.getvalue())
        return code, out.getvalue()

    def receiver(self, **kw: Any) -> Served:
        kw.setdefault("key_id", "v1")
        kw.setdefault("require_key_id", True)
        return Served(self, StubReceiver(**kw))

    def statuses(self, items: dict[str, tuple[str, str]]) -> list[str]:
        return [items[n][0] for n in ("api.listen", "ingress_path", "service.name", "clock skew", "key_id", "shared secret")]

    async def test_all_ok(self) -> None:
        srv = self.receiver()
        code, out = await self.check(config(srv.base_url))
        self.assertEqual(code, 0, out)
        items = lines(out)
        self.assertEqual(out.splitlines()[0], "relay check lab (as home-primary):")
        self.assertEqual(self.statuses(items), ["ok"] * 6)
        self.assertEqual(items["instance"][0], "ok")
        self.assertEqual(items["secret_ref"], ("ok", 'secret_ref "relay-lab-v1" resolves locally'))
        self.assertEqual(items["key_id"], ("ok", 'key id "v1" accepted'))
        self.assertEqual(items["accept"][0], "unknown")
        self.assertRegex(items["clock skew"][1], r"timestamp accepted; receiver clock (agrees|is about 1s)")
        # the probe: signed, no event type, so nothing can be enqueued
        got = srv.stub.received[0]
        self.assertEqual(got.json(), {"event": {"type": ""}, "origin": {"instance": "home-primary"}})
        self.assertEqual(srv.stub.verified, [True])

    async def test_json(self) -> None:
        srv = self.receiver()
        code, out = await self.check(config(srv.base_url), "--json")
        report = json.loads(out)
        self.assertEqual((code, report["ok"], report["instance"]), (0, True, "lab"))
        self.assertEqual([i["status"] for i in report["items"]][:8], ["ok"] * 8)

    async def test_wrong_service_name_unknown_peer(self) -> None:
        srv = self.receiver()
        cfg = config(srv.base_url, service="home-secondary", ingress_path="/ingest/peer/home-secondary")
        code, out = await self.check(cfg)
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["ok", "ok", "problem", "unknown", "unknown", "unknown"])
        self.assertEqual(
            items["service.name"][1],
            'receiver has no enabled peer "home-secondary" (the last segment of ingress_path); it must be '
            'an enabled remote_ingress.peers[].name there and equal this service.name "home-secondary"',
        )

    async def test_wrong_service_name_identity_mismatch(self) -> None:
        srv = self.receiver()
        code, out = await self.check(config(srv.base_url, service="home-secondary"))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(items["service.name"][0], "problem")
        self.assertIn('service.name "home-secondary" (X-Ductile-Peer) differs from the peer "home-primary"', items["service.name"][1])

    async def test_different_secret(self) -> None:
        srv = self.receiver(secret="another-secret")
        code, out = await self.check(config(srv.base_url))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["ok"] * 5 + ["problem"])
        self.assertEqual(
            items["shared secret"][1],
            'signature rejected: secret_ref "relay-lab-v1" resolves to a different secret here '
            "than the receiver peer's secret_ref there",
        )

    async def test_wrong_key_id(self) -> None:
        srv = self.receiver(key_id="v2")
        code, out = await self.check(config(srv.base_url))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["ok"] * 4 + ["problem", "unknown"])
        self.assertEqual(
            items["key_id"][1],
            'receiver answered "relay key id mismatch": key_id sent is "v1"; it must equal the '
            "receiver peer's key_id (required when require_key_id: true)",
        )

    async def test_missing_key_id(self) -> None:
        srv = self.receiver(key_id="", require_key_id=True)
        code, out = await self.check(config(srv.base_url, key_id=""))
        self.assertEqual(code, 1)
        self.assertIn('receiver answered "missing relay key id": key_id sent is none', lines(out)["key_id"][1])

    async def test_skewed_clock(self) -> None:
        srv = self.receiver(clock_offset=600.0)
        code, out = await self.check(config(srv.base_url))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["ok", "ok", "ok", "problem", "unknown", "unknown"])
        self.assertRegex(
            items["clock skew"][1],
            r"^timestamp rejected: receiver clock is about (599|600|601)s ahead of this host "
            r"\(from its Date header\); fix the clocks \(NTP\) or raise the receiver's "
            r"remote_ingress.allowed_clock_skew$",
        )

    async def test_receiver_down(self) -> None:
        code, out = await self.check(config(refused_url()))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["problem"] + ["unknown"] * 5)
        self.assertIn("could not reach http://127.0.0.1:", items["api.listen"][1])
        self.assertIn("check base_url and that the receiver's api.listen is enabled and reachable", items["api.listen"][1])

    async def test_wrong_ingress_path(self) -> None:
        srv = self.receiver()
        code, out = await self.check(config(srv.base_url, ingress_path="/ingest/peers/home-primary"))
        self.assertEqual(code, 1)
        items = lines(out)
        self.assertEqual(self.statuses(items), ["ok", "problem"] + ["unknown"] * 4)
        self.assertIn("receiver answered 404 for /ingest/peers/home-primary", items["ingress_path"][1])

    async def test_unexpected_answer(self) -> None:
        srv = Served(self, StubReceiver(mode="fixed", answer=(202, {}, b"{}")))
        code, out = await self.check(config(srv.base_url))
        self.assertEqual(code, 1)
        self.assertEqual(
            lines(out)["answer"],
            ("problem", 'unexpected answer to the probe: status 202 (expected 400 "event.type is required")'),
        )

    async def test_local_problems_send_nothing(self) -> None:
        srv = self.receiver()
        code, out = await self.check(config(srv.base_url, name="other"))
        self.assertEqual((code, lines(out)), (1, {"instance": ("problem", 'relay instance "lab" not configured')}))
        code, out = await self.check(config(srv.base_url, enabled=False))
        self.assertEqual((code, lines(out)), (1, {"instance": ("problem", 'relay instance "lab" is disabled')}))
        code, out = await self.check(config(srv.base_url, secret=" "))
        self.assertEqual(code, 1)
        self.assertEqual(
            lines(out)["secret_ref"],
            ("problem", 'secret_ref "relay-lab-v1" does not resolve to a non-empty secret'),
        )
        self.assertEqual(srv.stub.received, [])

    async def test_bad_base_url(self) -> None:
        code, out = await self.check(config("lab.example"))
        self.assertEqual(code, 1)
        self.assertEqual(
            lines(out)["base_url"],
            (
                "problem",
                'relay instance "lab": base_url "lab.example" with ingress_path '
                '"/ingest/peer/home-primary" is not an absolute http(s) URL',
            ),
        )
