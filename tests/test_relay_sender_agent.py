"""
RelaySender's Agent-driven exchange with fakes: an injected recording agent,
treq's in-memory C{RequestTraversalAgent}, and a C{task.Clock} for the one
overall deadline.  The loopback tests (test_relay_sender*) cover the real
pooled path; these pin what the hot path prepares once and how the deadline,
cancellation and late events behave, deterministically.
"""
from __future__ import annotations

import json
import time
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, ResponseDone, ResponseFailed
from twisted.web.error import PageRedirect, SchemeNotSupported
from twisted.web.http_headers import Headers

import ductile.relay.sender as sender_mod
from ductile.relay.envelope import Envelope
from ductile.relay.http_body import BytesProducer
from ductile.relay.sender import CachedEndpoints, ParsedOnceAgent, RelaySender, host_header

from .test_relay_sender import ENV, instance
from .test_relay_sender_stub import StubReceiver, stub_mac


class FakeBodyTransport:
    def __init__(self) -> None:
        self.stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1


class FakeResponse:
    def __init__(self, code: int = 202, headers: dict[bytes, list[bytes]] | None = None) -> None:
        self.code = code
        self.headers = Headers(headers or {})
        self.transport = FakeBodyTransport()
        self.proto: Any = None

    def deliverBody(self, proto: Any) -> None:
        self.proto = proto
        proto.makeConnection(self.transport)

    def finish(self, body: bytes) -> None:
        if body:
            self.proto.dataReceived(body)
        self.proto.connectionLost(Failure(ResponseDone()))


class RecordingAgent:
    """An IAgent whose requests wait for the test to answer them."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.cancelled = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        body = b""
        if bodyProducer is not None:
            written: list[bytes] = []

            class Consumer:
                def write(self, data: bytes) -> None:
                    written.append(data)

            produced = bodyProducer.startProducing(Consumer())
            assert produced.called
            body = b"".join(written)
            assert bodyProducer.length == len(body)
        self.requests.append(dict(method=method, uri=uri, headers=headers, body=body, d=d))
        return d

    def header(self, i: int, name: bytes) -> list[bytes] | None:
        return self.requests[i]["headers"].getRawHeaders(name)


class AgentSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.agent = RecordingAgent()

    def sender(self, *instances: Any, **kw: Any) -> RelaySender:
        return RelaySender(self.clock, "home-primary", instances, agent=self.agent, **kw)

    def test_request_on_the_wire(self) -> None:
        """One POST with the URL as bytes, the signed headers, Host, and the body with its length."""
        s = self.sender(instance("http://lab.example:8080/relay", key_id="v1"))
        d = s.attempt("lab", ENV)
        self.assertNoResult(d)
        req = self.agent.requests[0]
        self.assertEqual(req["method"], b"POST")
        self.assertEqual(req["uri"], b"http://lab.example:8080/relay/ingest/peer/home-primary")
        h = req["headers"]
        self.assertEqual(
            sorted(name for name, _ in h.getAllRawHeaders()),
            sorted([b"Content-Type", b"X-Ductile-Peer", b"X-Ductile-Key-Id", b"Host",
                    b"X-Ductile-Timestamp", b"X-Ductile-Signature"]),
        )
        self.assertEqual(h.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(h.getRawHeaders(b"X-Ductile-Peer"), [b"home-primary"])
        self.assertEqual(h.getRawHeaders(b"X-Ductile-Key-Id"), [b"v1"])
        self.assertEqual(h.getRawHeaders(b"Host"), [b"lab.example:8080"])
        ts = h.getRawHeaders(b"X-Ductile-Timestamp")[0]
        self.assertEqual(
            h.getRawHeaders(b"X-Ductile-Signature"),
            [stub_mac("s3cret-value", b"/relay/ingest/peer/home-primary", ts, req["body"]).encode()],
        )
        self.assertEqual(
            json.loads(req["body"]),
            {"event": {"type": "backup.ready", "payload": {"archive_id": "a1"}, "dedupe_key": "k1"},
             "origin": {"instance": "home-primary"}},
        )

    def test_url_encoded_once_per_instance(self) -> None:
        """The URL goes through hyperlink once, however many deliveries follow."""
        calls = []
        real = sender_mod.EncodedURL

        class Counting:
            @staticmethod
            def from_text(text: str) -> Any:
                calls.append(text)
                return real.from_text(text)

        self.patch(sender_mod, "EncodedURL", Counting)
        s = self.sender(instance("http://b\u00fccher.example"))
        for _ in range(3):
            s.attempt("lab", ENV)
        self.assertEqual(len(calls), 1)
        # encoded as treq encodes it: IDNA host
        self.assertEqual(
            [r["uri"] for r in self.agent.requests],
            [b"http://xn--bcher-kva.example/ingest/peer/home-primary"] * 3,
        )
        self.assertEqual(self.agent.header(0, b"Host"), [b"xn--bcher-kva.example"])
        # each delivery is signed afresh
        self.clock.advance(1)
        s.attempt("lab", ENV)
        stamps = {self.agent.header(i, b"X-Ductile-Timestamp")[0] for i in (0, 3)}
        self.assertEqual(len(stamps), 2)

    def test_bad_host_fails_every_attempt_the_same(self) -> None:
        s = self.sender(instance("http://exa mple.com"))
        outs = [self.successResultOf(s.attempt("lab", ENV)) for _ in range(2)]
        for out in outs:
            self.assertEqual(out.kind, "permanent")
            self.assertEqual(
                out.error,
                "deliver relay request to lab: InvalidCodepoint: Codepoint U+0020 at position 4 "
                "of 'exa mple' not allowed",
            )
        self.assertEqual(self.agent.requests, [])

    def test_accepted_cancels_the_deadline(self) -> None:
        s = self.sender(instance("http://lab.example"))
        d = s.attempt("lab", ENV)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        resp = FakeResponse(202)
        self.agent.requests[0]["d"].callback(resp)
        self.assertNoResult(d)
        resp.proto.dataReceived(b'{"status":"accepted",')
        resp.finish(b'"job_id":"j1"}')
        out = self.successResultOf(d)
        self.assertEqual((out.kind, out.status, out.acceptance["job_id"]), ("accepted", 202, "j1"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(resp.transport.stopped, 0)

    def test_deadline_while_waiting_for_headers_cancels_the_request(self) -> None:
        s = self.sender(instance("http://lab.example", timeout=2.5))
        d = s.attempt("lab", ENV)
        self.clock.advance(2.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        out = self.successResultOf(d)
        self.assertEqual(self.agent.cancelled, 1)
        self.assertEqual(
            (out.kind, out.status, out.error),
            ("retryable", None, "deliver relay request to lab: timed out after 2.5s (connect, headers and body)"),
        )
        self.assertAlmostEqual(out.duration, 2.5)

    def test_deadline_while_reading_the_body_drops_the_connection(self) -> None:
        s = self.sender(instance("http://lab.example", timeout=1))
        d = s.attempt("lab", ENV)
        resp = FakeResponse(202)
        self.agent.requests[0]["d"].callback(resp)
        resp.proto.dataReceived(b'{"status":')
        self.clock.advance(1)
        out = self.successResultOf(d)
        self.assertEqual(out.error, "deliver relay request to lab: timed out after 1s (connect, headers and body)")
        self.assertEqual(resp.transport.stopped, 1)
        self.assertEqual(self.agent.cancelled, 0)
        # what arrives late changes nothing and raises nothing
        resp.proto.dataReceived(b'"accepted"}')
        resp.proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(resp.transport.stopped, 1)

    def test_default_timeout_for_zero(self) -> None:
        s = self.sender(instance("http://lab.example", timeout=0))
        d = s.attempt("lab", ENV)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("timed out after 10s", self.successResultOf(d).error)

    def test_cancelling_the_exchange(self) -> None:
        s = self.sender(instance("http://lab.example"))
        d = s.exchange(s.instance("lab"), b"{}")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.agent.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # and while reading the body
        d = s.exchange(s.instance("lab"), b"{}")
        resp = FakeResponse(202)
        self.agent.requests[1]["d"].callback(resp)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(resp.transport.stopped, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_transport_failure_is_retryable_and_unwrapped(self) -> None:
        s = self.sender(instance("http://lab.example"))
        d = s.attempt("lab", ENV)
        self.agent.requests[0]["d"].errback(Failure(ConnectionLost("peer went away")))
        out = self.successResultOf(d)
        self.assertEqual(
            (out.kind, out.error), ("retryable", "deliver relay request to lab: ConnectionLost: Connection to the other side was lost "
                          "in a non-clean fashion: peer went away.")
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_body_error_after_headers(self) -> None:
        s = self.sender(instance("http://lab.example"))
        d = s.attempt("lab", ENV)
        resp = FakeResponse(202)
        self.agent.requests[0]["d"].callback(resp)
        resp.proto.connectionLost(Failure(ConnectionLost("cut")))
        out = self.successResultOf(d)
        self.assertEqual((out.kind, out.status), ("retryable", None))
        self.assertEqual(
            out.error,
            "deliver relay request to lab: ConnectionLost: Connection to the other side was lost in a "
            "non-clean fashion: cut.",
        )

    def refused(self, s: RelaySender) -> tuple[defer.Deferred[Any], FakeResponse]:
        d = s.attempt("lab", ENV)
        resp = FakeResponse(301)
        err = ResponseFailed([Failure(PageRedirect(b"301", location=b"http://lab.example/x"))], resp)
        self.agent.requests[0]["d"].errback(Failure(err))
        return d, resp

    def test_refused_response_body_is_read_before_the_failure(self) -> None:
        """A PageRedirect keeps its connection poolable: its body is read first."""
        s = self.sender(instance("http://lab.example"))
        d, resp = self.refused(s)
        self.assertNoResult(d)
        resp.finish(b"moved")
        out = self.successResultOf(d)
        self.assertEqual(
            (out.kind, out.error),
            ("retryable", "deliver relay request to lab: PageRedirect: 301 Moved Permanently to "
             "http://lab.example/x"),
        )
        self.assertEqual(resp.transport.stopped, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_response_body_under_the_deadline(self) -> None:
        s = self.sender(instance("http://lab.example", timeout=1))
        d, resp = self.refused(s)
        self.clock.advance(1)
        out = self.successResultOf(d)
        self.assertEqual(out.error, "deliver relay request to lab: timed out after 1s (connect, headers and body)")
        self.assertEqual(resp.transport.stopped, 1)
        resp.finish(b"late")  # nothing more happens

    def test_synchronous_agent_error_is_an_outcome(self) -> None:
        class Broken:
            def request(self, *a: Any, **kw: Any) -> Any:
                raise ValueError("no good")

        s = RelaySender(self.clock, "home-primary", [instance("http://lab.example")], agent=Broken())
        out = self.successResultOf(s.attempt("lab", ENV))
        self.assertEqual((out.kind, out.error), ("permanent", "deliver relay request to lab: ValueError: no good"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_synchronous_response(self) -> None:
        resp = FakeResponse(503, {b"Retry-After": [b"3"]})

        class Immediate:
            def request(self, *a: Any, **kw: Any) -> Any:
                return defer.succeed(resp)

        s = RelaySender(self.clock, "home-primary", [instance("http://lab.example")], agent=Immediate())
        d = s.attempt("lab", ENV)
        resp.finish(b'{"error":"busy"}')
        out = self.successResultOf(d)
        self.assertEqual((out.kind, out.status, out.retry_after), ("retryable", 503, 3.0))
        self.assertEqual(out.error, "relay receiver rejected request: busy")

    def test_oversize_body_via_fake(self) -> None:
        s = self.sender(instance("http://lab.example"), max_response_body=8)
        d = s.attempt("lab", ENV)
        resp = FakeResponse(202)
        self.agent.requests[0]["d"].callback(resp)
        resp.proto.dataReceived(b"123456789")
        out = self.successResultOf(d)
        self.assertEqual(out.error, "decode relay acceptance: response body exceeds 8 bytes")
        self.assertEqual(resp.transport.stopped, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_leaves_an_injected_agent_alone(self) -> None:
        s = self.sender(instance("http://lab.example"))
        self.successResultOf(s.close())


class TraversalTests(SynchronousTestCase):
    """Through treq's in-memory agent: a real Site and a real HTTP/1.1 exchange, no sockets."""

    def test_accepted_through_stub_receiver(self) -> None:
        clock = task.Clock()
        clock.advance(time.time())
        stub = StubReceiver()
        agent = RequestTraversalAgent(stub)
        s = RelaySender(clock, "home-primary", [instance("http://127.0.0.1:8080")], agent=agent)
        d = s.attempt("lab", Envelope(event_type="backup.ready", payload={"n": 1}))
        agent.flush()
        out = self.successResultOf(d)
        self.assertEqual(out.kind, "accepted", out.error)
        self.assertEqual(out.acceptance["job_id"], "rjob-1")
        self.assertEqual(stub.verified, [True])
        got = stub.received[0]
        self.assertEqual(got.header("content-length"), str(len(got.body)))
        self.assertEqual(got.header("host"), "127.0.0.1:8080")
        self.assertIsNone(got.header("accept-encoding"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_redirect_on_post_stays_a_retryable_failure(self) -> None:
        clock = task.Clock()
        stub = StubReceiver(mode="fixed", answer=(307, {"Location": "/other"}, b""))
        agent = RequestTraversalAgent(stub)
        s = RelaySender(clock, "home-primary", [instance("http://127.0.0.1:8080")], agent=agent)
        d = s.attempt("lab", ENV)
        agent.flush()
        out = self.successResultOf(d)
        self.assertEqual(
            (out.kind, out.status, out.error),
            ("retryable", None, "deliver relay request to lab: PageRedirect: 307 Temporary Redirect to "
             "http://127.0.0.1:8080/ingest/peer/home-primary"),
        )


class HostHeaderTests(SynchronousTestCase):
    def test_values(self) -> None:
        for url, want in [
            (b"http://lab.example/x", b"lab.example"),
            (b"http://lab.example:80/x", b"lab.example"),
            (b"https://lab.example/x", b"lab.example"),
            (b"https://lab.example:8443/x", b"lab.example:8443"),
            (b"http://lab.example:443/x", b"lab.example:443"),
            (b"http://[::1]:8080/x", b"[::1]:8080"),
            (b"http://[::1]/x", b"[::1]"),
            (b"http://127.0.0.1:9/x", b"127.0.0.1:9"),
        ]:
            self.assertEqual(host_header(URI.fromBytes(url)), want, url)


class CachedEndpointsTests(SynchronousTestCase):
    def test_one_endpoint_per_destination(self) -> None:
        f = CachedEndpoints(task.Clock(), 3.0)
        a = f.endpointForURI(URI.fromBytes(b"http://lab.example:8080/a"))
        self.assertIs(f.endpointForURI(URI.fromBytes(b"http://lab.example:8080/b")), a)
        self.assertIsNot(f.endpointForURI(URI.fromBytes(b"http://lab.example:8081/a")), a)
        self.assertIsNot(f.endpointForURI(URI.fromBytes(b"http://other.example:8080/a")), a)
        self.assertEqual(type(a).__name__, "HostnameEndpoint")

    def test_https_is_wrapped_in_tls(self) -> None:
        f = CachedEndpoints(task.Clock(), None)
        ep = f.endpointForURI(URI.fromBytes(b"https://lab.example/a"))
        self.assertEqual(type(ep).__name__, "_WrapperEndpoint")
        self.assertIs(f.endpointForURI(URI.fromBytes(b"https://lab.example/b")), ep)
        self.assertIsNot(f.endpointForURI(URI.fromBytes(b"http://lab.example:443/b")), ep)

    def test_other_schemes_refused(self) -> None:
        f = CachedEndpoints(task.Clock(), None)
        e = self.assertRaises(SchemeNotSupported, f.endpointForURI, URI.fromBytes(b"ftp://lab.example/a"))
        self.assertEqual(str(e), "Unsupported scheme: b'ftp'")


class BytesProducerTests(SynchronousTestCase):
    def test_writes_everything_at_once(self) -> None:
        p = BytesProducer(b"hello")
        self.assertEqual(p.length, 5)
        out: list[bytes] = []

        class C:
            write = out.append

        d = p.startProducing(C())
        self.assertEqual(out, [b"hello"])
        self.assertIsNone(self.successResultOf(d))
        p.pauseProducing()
        p.resumeProducing()
        p.stopProducing()
        self.assertEqual(out, [b"hello"])



class ParsedOnceAgentTests(SynchronousTestCase):
    """Requests to one URI parse it once; the endpoint and pool key stay Agent's."""

    def setUp(self) -> None:
        self.parses: list[bytes] = []
        real = URI.fromBytes.__func__  # type: ignore[attr-defined]

        def counting(cls: Any, uri: bytes, defaultPort: Any = None) -> Any:
            self.parses.append(uri)
            return real(cls, uri, defaultPort)

        self.patch(URI, "fromBytes", classmethod(counting))
        self.connects: list[tuple[Any, Any]] = []
        outer = self

        class Endpoint:
            def __init__(self, uri: Any) -> None:
                self.uri = uri

            def connect(self, factory: Any) -> Any:
                outer.connects.append((self.uri, factory))
                return defer.Deferred()

        class Endpoints:
            def endpointForURI(self, uri: Any) -> Any:
                return Endpoint((uri.scheme, uri.host, uri.port, uri.path))

        from twisted.web.client import HTTPConnectionPool

        self.agent = ParsedOnceAgent.usingEndpointFactory(
            task.Clock(), Endpoints(), pool=HTTPConnectionPool(task.Clock(), persistent=True)
        )

    def test_parses_once_per_uri(self) -> None:
        for _ in range(3):
            self.agent.request(b"POST", b"http://lab.example:81/a?x=1", Headers({b"Host": [b"h"]}))
        self.agent.request(b"POST", b"http://lab.example:81/b", Headers({b"Host": [b"h"]}))
        self.assertEqual(
            self.parses,
            [b"http://lab.example:81/a?x=1"] * 2 + [b"http://lab.example:81/b"] * 2,
        )
        self.assertEqual(
            [uri for uri, _ in self.connects],
            [(b"http", b"lab.example", 81, b"/a")] * 3 + [(b"http", b"lab.example", 81, b"/b")],
        )

    def test_without_the_private_method_every_request_is_public(self) -> None:
        self.patch(ParsedOnceAgent, "_direct", False)
        for _ in range(3):
            self.agent.request(b"POST", b"http://lab.example/a", Headers({b"Host": [b"h"]}))
        self.assertEqual(self.parses, [b"http://lab.example/a"] * 3)
        self.assertEqual(len(self.connects), 3)

    def test_invalid_uri_refused_every_time(self) -> None:
        for _ in range(2):
            self.assertRaises(ValueError, self.agent.request, b"POST", b"http://lab.example/a b")
        self.assertEqual(self.connects, [])
