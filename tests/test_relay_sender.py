"""
RelaySender against a stub receiver on real loopback (contract §1.2-1.5, §1.12).
"""
from __future__ import annotations

import json
import re

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.trial import unittest

from ductile.config.models import Instance
from ductile.relay.envelope import Envelope, Origin
from ductile.relay.sender import RelaySender
from ductile.timestamps import parse_rfc3339

from .test_relay_sender_stub import Served, StubReceiver, refused_url, sequence

SECRET = "s3cret-value"


def instance(base_url: str, **kw: object) -> Instance:
    fields: dict[str, object] = dict(
        name="lab",
        base_url=base_url,
        ingress_path="/ingest/peer/home-primary",
        secret_ref="relay-lab-v1",
        secret=SECRET,
        timeout=5.0,
    )
    fields.update(kw)
    return Instance(**fields)  # type: ignore[arg-type]


ENV = Envelope(event_type="backup.ready", payload={"archive_id": "a1"}, dedupe_key="k1")


class SenderTests(unittest.TestCase):
    timeout = 20

    def serve(self, stub: StubReceiver, prefix: str = "") -> Served:
        return Served(self, stub, prefix)

    def sender(self, *instances: Instance, **kw: object) -> RelaySender:
        s = RelaySender(reactor, "home-primary", instances, **kw)  # type: ignore[arg-type]
        self.addCleanup(s.close)
        return s

    async def test_signed_request_accepted(self) -> None:
        """Headers, a fresh RFC3339 timestamp, a signature over the path incl. a base_url prefix."""
        stub = StubReceiver(listen_path="/relay/ingest/peer")
        srv = self.serve(stub, prefix="/relay/")
        s = self.sender(instance(srv.base_url))
        out = await s.attempt("lab", ENV)
        self.assertEqual(out.kind, "accepted", out.error)
        self.assertEqual(out.status, 202)
        self.assertEqual(out.error, "")
        self.assertEqual(out.acceptance["receiver_event_id"], "rev-1")
        self.assertEqual(out.acceptance["job_id"], "rjob-1")
        self.assertGreaterEqual(out.duration, 0.0)
        got = stub.received[0]
        self.assertEqual(got.path, b"/relay/ingest/peer/home-primary")
        self.assertEqual(stub.verified, [True])
        self.assertEqual(got.header("x-ductile-peer"), "home-primary")
        self.assertEqual(got.header("content-type"), "application/json")
        self.assertFalse(got.has_key_id)
        ts = got.header("x-ductile-timestamp")
        self.assertRegex(ts, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}Z$")
        self.assertLess(abs(parse_rfc3339(ts) - reactor.seconds()), 5)
        self.assertRegex(got.header("x-ductile-signature"), r"^[0-9a-f]{64}$")
        self.assertEqual(
            got.json(),
            {
                "event": {"type": "backup.ready", "payload": {"archive_id": "a1"}, "dedupe_key": "k1"},
                "origin": {"instance": "home-primary"},
            },
        )

    async def test_key_id_sent_when_configured_and_fresh_timestamp(self) -> None:
        stub = StubReceiver(key_id="v1", require_key_id=True)
        srv = self.serve(stub)
        s = self.sender(instance(srv.base_url, key_id="v1"))
        first = await s.attempt("lab", ENV)
        second = await s.attempt("lab", ENV)
        self.assertEqual((first.kind, second.kind), ("accepted", "accepted"))
        self.assertEqual([r.header("x-ductile-key-id") for r in stub.received], ["v1", "v1"])
        self.assertNotEqual(
            stub.received[0].header("x-ductile-timestamp"),
            stub.received[1].header("x-ductile-timestamp"),
        )
        self.assertEqual(stub.verified, [True, True])

    async def test_wrong_secret_is_permanent_with_receiver_text(self) -> None:
        stub = StubReceiver(secret="other")
        srv = self.serve(stub)
        out = await self.sender(instance(srv.base_url)).attempt("lab", ENV)
        self.assertEqual(out.kind, "permanent")
        self.assertEqual(out.status, 403)
        self.assertEqual(out.error, "relay receiver rejected request: forbidden")

    async def test_origin_instance_kept_when_given(self) -> None:
        stub = StubReceiver(mode="fixed", answer=(202, {}, b'{"status":"accepted"}'))
        srv = self.serve(stub)
        env = Envelope(event_type="backup.ready", origin=Origin(instance="x", plugin="p"))
        out = await self.sender(instance(srv.base_url)).attempt("lab", env)
        self.assertEqual(out.kind, "accepted")
        self.assertEqual(stub.received[0].json()["origin"], {"instance": "x", "plugin": "p"})

    async def _fixed(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        stub = StubReceiver(mode="fixed", answer=(status, headers or {}, body))
        srv = self.serve(stub)
        return await self.sender(instance(srv.base_url)).attempt("lab", ENV)

    async def test_200_is_permanent(self) -> None:
        out = await self._fixed(200, b'{"status":"ok"}')
        self.assertEqual((out.kind, out.status), ("permanent", 200))
        self.assertEqual(out.error, "relay receiver returned status 200")

    async def test_202_non_object_is_permanent(self) -> None:
        out = await self._fixed(202, b"[1,2]")
        self.assertEqual(out.kind, "permanent")
        self.assertTrue(out.error.startswith("decode relay acceptance: "), out.error)

    async def test_retryable_statuses(self) -> None:
        for status in (408, 425, 429, 500, 503):
            out = await self._fixed(status, b'{"error":"busy"}')
            self.assertEqual((out.kind, out.status), ("retryable", status))
            self.assertEqual(out.error, "relay receiver rejected request: busy")

    async def test_422_permanent_with_error(self) -> None:
        out = await self._fixed(422, b'{"error":"event type not allowed for peer"}\n')
        self.assertEqual(out.kind, "permanent")
        self.assertEqual(out.error, "relay receiver rejected request: event type not allowed for peer")

    async def test_retry_after_parsed(self) -> None:
        out = await self._fixed(503, b"", {"Retry-After": "7"})
        self.assertEqual((out.kind, out.retry_after), ("retryable", 7.0))
        self.assertEqual(out.error, "relay receiver returned status 503")

    async def test_connection_refused_is_retryable(self) -> None:
        out = await self.sender(instance(refused_url())).attempt("lab", ENV)
        self.assertEqual(out.kind, "retryable")
        self.assertIsNone(out.status)
        self.assertTrue(out.error.startswith("deliver relay request to lab: "), out.error)
        self.assertIn("refused", out.error.lower())

    async def test_stalled_body_hits_overall_deadline(self) -> None:
        stub = StubReceiver(mode="stall")
        srv = self.serve(stub)
        started = reactor.seconds()
        out = await self.sender(instance(srv.base_url, timeout=0.5)).attempt("lab", ENV)
        self.assertEqual(out.kind, "retryable")
        self.assertEqual(
            out.error,
            "deliver relay request to lab: timed out after 0.5s (connect, headers and body)",
        )
        self.assertLess(reactor.seconds() - started, 3)
        self.assertGreaterEqual(out.duration, 0.45)
        self.assertEqual(len(stub.stalled), 1)
        # the client itself dropped the connection (not the test cleanup)
        await stub.stall_dropped.addTimeout(2, reactor)

    async def test_oversize_error_body(self) -> None:
        stub = StubReceiver(mode="big", answer=(503, {}, b""))
        srv = self.serve(stub)
        out = await self.sender(instance(srv.base_url), max_response_body=1024).attempt("lab", ENV)
        self.assertEqual((out.kind, out.status), ("retryable", 503))
        self.assertEqual(out.error, "relay receiver returned status 503")

    async def test_oversize_acceptance_is_permanent(self) -> None:
        stub = StubReceiver(mode="big", answer=(202, {}, b""))
        srv = self.serve(stub)
        out = await self.sender(instance(srv.base_url), max_response_body=1024).attempt("lab", ENV)
        self.assertEqual(out.kind, "permanent")
        self.assertEqual(out.error, "decode relay acceptance: response body exceeds 1024 bytes")

    async def test_unknown_and_disabled_instance(self) -> None:
        s = self.sender(instance("http://127.0.0.1:1", name="off", enabled=False))
        out = await s.attempt("lab", ENV)
        self.assertEqual((out.kind, out.error), ("permanent", 'relay instance "lab" not configured'))
        out = await s.attempt("off", ENV)
        self.assertEqual(out.error, 'relay instance "off" not configured')

    async def test_allow_list(self) -> None:
        s = self.sender(instance("http://127.0.0.1:1", allow=("other.event",)))
        out = await s.attempt("lab", ENV)
        self.assertEqual(out.kind, "permanent")
        self.assertEqual(out.error, 'relay instance "lab" does not allow event type "backup.ready"')

    async def test_empty_secret(self) -> None:
        s = self.sender(instance("http://127.0.0.1:1", secret="  "))
        out = await s.attempt("lab", ENV)
        self.assertEqual((out.kind, out.error), ("permanent", "relay signing failed"))

    async def test_connection_reused(self) -> None:
        seq = sequence((202, {}, b"{}"))
        stub = StubReceiver(mode=seq)
        srv = self.serve(stub)
        s = self.sender(instance(srv.base_url))
        for _ in range(3):
            self.assertEqual((await s.attempt("lab", ENV)).kind, "accepted")
        self.assertEqual(len(stub.received), 3)
        # one persistent connection carried all three
        self.assertEqual(srv.connections, 1)

    async def test_hangup_without_response_is_retryable(self) -> None:
        stub = StubReceiver(mode="hangup")
        srv = self.serve(stub)
        out = await self.sender(instance(srv.base_url)).attempt("lab", ENV)
        self.assertEqual((out.kind, out.status), ("retryable", None))
        # Agent's ResponseNeverReceived wrapper is unwrapped to the real reason
        self.assertRegex(out.error, r"^deliver relay request to lab: Connection(Lost|Done): ")

    async def test_check_is_never_an_errback(self) -> None:
        report = await self.sender(instance(refused_url())).check("lab")
        self.assertFalse(report.ok)
        self.assertEqual(report.item("api.listen").status, "problem")

    async def test_bad_urls_are_permanent(self) -> None:
        s = self.sender(
            instance("lab.example", name="noscheme"),
            instance("ftp://lab.example", name="ftp"),
            instance("http://exa mple.com", name="idna"),
        )
        out = await s.attempt("noscheme", ENV)
        self.assertEqual(
            (out.kind, out.error),
            (
                "permanent",
                'relay instance "noscheme": base_url "lab.example" with ingress_path '
                '"/ingest/peer/home-primary" is not an absolute http(s) URL',
            ),
        )
        self.assertEqual((await s.attempt("ftp", ENV)).kind, "permanent")
        out = await s.attempt("idna", ENV)
        self.assertEqual(out.kind, "permanent")
        self.assertTrue(out.error.startswith("deliver relay request to idna: "), out.error)

    async def test_no_cookies_carried_between_deliveries(self) -> None:
        """Like Go's sender (no cookie jar): a Set-Cookie is not sent back."""
        stub = StubReceiver(mode="fixed", answer=(202, {"Set-Cookie": "s=1; Path=/"}, b"{}"))
        srv = self.serve(stub)
        s = self.sender(instance(srv.base_url))
        for _ in range(2):
            self.assertEqual((await s.attempt("lab", ENV)).kind, "accepted")
        self.assertEqual([r.header("cookie") for r in stub.received], [None, None])
        self.assertEqual([r.header("accept-encoding") for r in stub.received], [None, None])

    async def test_redirect_on_post_is_retryable(self) -> None:
        stub = StubReceiver(mode="fixed", answer=(301, {"Location": "/elsewhere"}, b"moved"))
        srv = self.serve(stub)
        out = await self.sender(instance(srv.base_url)).attempt("lab", ENV)
        self.assertEqual((out.kind, out.status), ("retryable", None))
        self.assertEqual(
            out.error,
            f"deliver relay request to lab: PageRedirect: 301 Moved Permanently to "
            f"{srv.base_url}/ingest/peer/home-primary",
        )

    async def test_cancel_drops_a_stalled_connection(self) -> None:
        stub = StubReceiver(mode="stall")
        srv = self.serve(stub)
        s = self.sender(instance(srv.base_url))
        d = s.exchange(s.instance("lab"), b"{}")
        while not stub.stalled:  # the receiver has sent headers and part of the body
            await deferLater(reactor, 0.01)
        await deferLater(reactor, 0.05)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await stub.stall_dropped.addTimeout(2, reactor)
