"""
Tests for L{ductile.web.limits}: the body cap enforced before buffering.

In-memory tests drive a L{DuctileSite} channel over a L{StringTransport};
the loopback tests send real oversize uploads (declared and chunked) over a
socket and check that the resource never renders.
"""
from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from ductile.relay.ingress import RemoteIngressResource, ingress_body_limit_for, mount_remote_ingress
from ductile.relay.stats import IngressStats
from ductile.web.limits import (
    BodyLimit,
    DuctileSite,
    LimitedRequest,
    path_segments,
    prefix_limit_for,
    request_target_path,
    too_large_response,
)
from tests.test_relay_ingress import (
    VECTOR_EPOCH,
    VECTOR_PATH,
    FakeAcceptor,
    Response,
    connect,
    envelope,
    make_ingress,
    relay_headers,
)


class Echo(Resource):
    """Counts renders; answers 200 with the body length."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render_POST(self, request: Any) -> bytes:
        self.rendered += 1
        return b"%d" % (len(request.content.read()),)


def limit_for(path: bytes) -> int | BodyLimit:
    if path.startswith(b"/small"):
        return BodyLimit(10, "small things only")
    return 100


class Harness:
    """A DuctileSite channel on a StringTransport."""

    def __init__(self, limit: Any = limit_for) -> None:
        self.resource = Echo()
        self.site = DuctileSite(self.resource, body_limit_for=limit, reactor=MemoryReactorClock())
        self.channel = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.channel.dataReceived(data)
        return self.transport.value()


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra
        + b"Content-Length: %d\r\n\r\n" % (len(body),) + body
    )


def chunked_head(path: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + extra + b"\r\n"
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % (len(data),) + data + b"\r\n"


class InMemoryLimitTests(SynchronousTestCase):
    def test_small_body_renders(self) -> None:
        h = Harness()
        out = h.send(post(b"/x", b"a" * 100))
        self.assertIn(b"200 OK", out)
        self.assertTrue(out.endswith(b"100"))
        self.assertEqual(h.resource.rendered, 1)

    def test_declared_length_over_limit(self) -> None:
        """413 straight after the headers: no body byte needed, no render."""
        h = Harness()
        head = post(b"/x", b"").replace(b"Content-Length: 0", b"Content-Length: 10000000")
        out = h.send(head)
        self.assertEqual(out, too_large_response("request body too large"))
        self.assertTrue(h.transport.disconnecting)
        h.send(b"a" * 5000)
        self.assertEqual(h.resource.rendered, 0)
        self.assertEqual(h.transport.value(), out)

    def test_no_100_continue(self) -> None:
        """C{Expect: 100-continue} on a refused upload gets only the 413."""
        h = Harness()
        out = h.send(
            b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 101\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", out)
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "))

    def test_100_continue_kept_when_allowed(self) -> None:
        h = Harness()
        out = h.send(
            b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 3\r\n\r\n"
        )
        self.assertEqual(out, b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_chunked_crossing_limit(self) -> None:
        """A chunked body is counted as it arrives; the crossing chunk trips it."""
        h = Harness()
        self.assertEqual(h.send(chunked_head(b"/x") + chunk(b"a" * 60)), b"")
        out = h.send(chunk(b"b" * 41))
        self.assertEqual(out, too_large_response("request body too large"))
        h.send(chunk(b"c" * 10) + b"0\r\n\r\n")
        self.assertEqual(h.resource.rendered, 0)
        self.assertEqual(h.transport.value(), out)

    def test_chunked_within_limit(self) -> None:
        h = Harness()
        out = h.send(chunked_head(b"/x") + chunk(b"a" * 60) + chunk(b"b" * 40) + b"0\r\n\r\n")
        self.assertIn(b"200 OK", out)
        self.assertEqual(h.resource.rendered, 1)

    def test_lying_content_length_body_completed_same_read(self) -> None:
        """Limit hit and body complete in one read: still no render."""
        h = Harness()
        out = h.send(post(b"/small", b"a" * 11))
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "))
        self.assertTrue(out.endswith(b'{"error":"small things only"}\n'))
        self.assertEqual(h.resource.rendered, 0)

    def test_limit_follows_path(self) -> None:
        """C{/small...} gets 10 bytes; the query string is ignored."""
        h = Harness()
        self.assertIn(b"413", h.send(post(b"/small?x=" + b"y" * 200, b"a" * 11)))
        h = Harness()
        self.assertIn(b"200 OK", h.send(post(b"/large?small", b"a" * 11)))

    def test_reject_hook(self) -> None:
        seen: list[tuple[Any, int]] = []
        limit = BodyLimit(5, "nope", on_reject=lambda req, size: seen.append((req, size)))
        h = Harness(lambda path: limit)
        h.send(post(b"/x", b"123456"))
        [(req, size)] = seen
        self.assertIsInstance(req, LimitedRequest)
        self.assertEqual(size, 6)

    def test_header_limits(self) -> None:
        """More than 100 headers: 400 from the channel."""
        h = Harness()
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        self.assertIn(b"400 Bad Request", h.send(post(b"/x", b"", extra)))
        h = Harness()
        extra = b"".join(b"X-Big%d: " % i + b"v" * 6000 + b"\r\n" for i in range(3))
        self.assertIn(b"400 Bad Request", h.send(post(b"/x", b"", extra)))
        self.assertEqual(h.resource.rendered, 0)

    def test_no_access_log(self) -> None:
        """The per-request access log line is disabled."""
        h = Harness()
        h.site._logFile = io.StringIO()
        h.send(post(b"/x", b"abc"))
        self.assertEqual(h.site._logFile.getvalue(), "")


class PathHelperTests(SynchronousTestCase):
    def test_request_target_path(self) -> None:
        self.assertEqual(request_target_path(b"/a/b?c=d"), b"/a/b")
        self.assertEqual(request_target_path(b"http://h:1/a/b?q"), b"/a/b")
        self.assertEqual(request_target_path(b"http://h"), b"/")

    def test_segments_unquoted_like_twisted(self) -> None:
        self.assertEqual(path_segments(b"/%69ngest/a%2Fb"), [b"ingest", b"a/b"])

    def test_prefix_limit(self) -> None:
        inside = BodyLimit(1, "in")
        f = prefix_limit_for("/ingest/peer", inside, 99)
        self.assertIs(f(b"/ingest/peer/x"), inside)
        self.assertIs(f(b"/%69ngest/peer/x/y"), inside)
        self.assertIs(f(b"/ingest/peer/"), inside)
        self.assertEqual(f(b"/ingest/peer"), 99)
        self.assertEqual(f(b"/ingest/peerx/y"), 99)
        self.assertEqual(f(b""), 99)
        self.assertIs(prefix_limit_for("/", inside, 99)(b"/x"), inside)

    def test_ingress_body_limit_for_without_ingress(self) -> None:
        self.assertEqual(ingress_body_limit_for(None, 7)(b"/ingest/peer/x"), 7)


class LoopbackOversizeTests(TestCase):
    """Real uploads over a socket against the relay mounted on a DuctileSite."""

    timeout = 15

    def setUp(self) -> None:
        self.rendered: list[Any] = []
        original = RemoteIngressResource.render

        def spy(resource: RemoteIngressResource, request: Any) -> Any:
            self.rendered.append(request)
            return original(resource, request)

        self.patch(RemoteIngressResource, "render", spy)
        self.acceptor = FakeAcceptor()
        self.stats = IngressStats()
        ingress = make_ingress(max_body_size=1024)
        clock = task.Clock()
        clock.rightNow = VECTOR_EPOCH
        root = Resource()
        mount_remote_ingress(root, ingress, self.acceptor, clock, self.stats)
        site = DuctileSite(
            root, body_limit_for=ingress_body_limit_for(ingress, 10 * 1024 * 1024, self.stats)
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def head(self, body: bytes, framing: str) -> bytes:
        headers = relay_headers(body=body)
        lines = [f"POST {VECTOR_PATH} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()] + [framing]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def assertRefused(self, raw: bytes) -> None:
        response = Response(raw)
        self.assertEqual(response.status, 413, raw[:200])
        self.assertEqual(response.body, b'{"error":"relay payload too large"}\n')
        self.assertNotIn(b"100 Continue", raw)
        self.assertEqual(self.rendered, [])
        self.assertEqual(self.acceptor.calls, [])
        self.assertEqual(self.stats.rejected, {"payload_too_large": 1})

    async def test_large_content_length(self) -> None:
        """A 10 MB declared, validly signed upload is refused after the headers."""
        body = envelope(payload={"pad": "x" * (10 * 1024 * 1024)})
        proto = await connect(self.port)
        proto.transport.write(
            self.head(body, f"Content-Length: {len(body)}\r\nExpect: 100-continue")
        )
        self.assertRefused(await proto.done)

    async def test_chunked_crossing_cap(self) -> None:
        """A validly signed chunked body crossing the cap mid-stream: 413."""
        body = envelope(payload={"pad": "x" * 3000})
        proto = await connect(self.port)
        proto.transport.write(self.head(body, "Transfer-Encoding: chunked"))
        proto.transport.write(chunk(body[:1000]))
        proto.transport.write(chunk(body[1000:2000]))
        self.assertRefused(await proto.done)

    async def test_chunked_under_cap_accepted(self) -> None:
        """Control: the same framing under the cap renders and is accepted."""
        body = envelope()
        proto = await connect(self.port)
        proto.transport.write(self.head(body, "Transfer-Encoding: chunked"))
        proto.transport.write(chunk(body[:10]) + chunk(body[10:]) + b"0\r\n\r\n")
        response = Response(await proto.done)
        self.assertEqual(response.status, 202, response.raw)
        self.assertEqual(len(self.rendered), 1)
        self.assertEqual(len(self.acceptor.calls), 1)

    async def test_streamed_oversize_body(self) -> None:
        """
        The client really sends 2 MB: the 413 still arrives (the server stops
        reading instead of draining the upload).
        """
        body = envelope(payload={"pad": "x" * (2 * 1024 * 1024)})
        proto = await connect(self.port)
        proto.transport.write(self.head(body, f"Content-Length: {len(body)}"))
        proto.transport.write(body)
        self.assertRefused(await proto.done)

    async def test_many_concurrent_oversize_uploads(self) -> None:
        """Twenty declared 10 MB uploads at once: every one gets its 413."""
        body = envelope()
        protos = [await connect(self.port) for _ in range(20)]
        for proto in protos:
            proto.transport.write(self.head(body, "Content-Length: 10485760"))
        for proto in protos:
            response = Response(await proto.done)
            self.assertEqual(response.status, 413)
        self.assertEqual(self.rendered, [])
        self.assertEqual(self.stats.rejected, {"payload_too_large": 20})


class ReadDeadlineTests(SynchronousTestCase):
    """A client must send a whole request within the read deadline."""

    def _connect(self, deadline: float = 10.0):
        from twisted.internet import task
        from twisted.internet.testing import StringTransport
        from twisted.web import resource

        from ductile.web.limits import DuctileSite

        class Ok(resource.Resource):
            isLeaf = True

            def render_POST(self, request):
                return b"ok"

        clock = task.Clock()
        site = DuctileSite(Ok(), body_limit_for=lambda path: 1024, reactor=clock, read_deadline=deadline)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return clock, channel, transport

    def test_trickling_client_cut_off(self) -> None:
        """Bytes trickling in do not extend the deadline: 408 and the connection closes."""
        clock, channel, transport = self._connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(9):
            clock.advance(1)
            channel.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(transport.value().endswith(b'{"error":"request read timed out"}\n'))
        self.assertTrue(transport.disconnecting)

    def test_complete_request_disarms_deadline(self) -> None:
        """A request received in time is answered, and the deadline does not fire later."""
        clock, channel, transport = self._connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        clock.advance(30)
        self.assertIn(b"200 OK", transport.value())
        self.assertNotIn(b"408", transport.value())
        self.assertEqual([c for c in clock.getDelayedCalls() if "_readTimedOut" in repr(c)], [])


class ConnectionCapTests(SynchronousTestCase):
    def test_connections_beyond_cap_refused(self) -> None:
        """Past max_connections a new connection is refused; a closed one frees a slot."""
        from twisted.internet import task
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone
        from twisted.web import resource

        from ductile.web.limits import DuctileSite

        site = DuctileSite(resource.Resource(), body_limit_for=lambda p: 10, reactor=task.Clock(), max_connections=2)
        first, second = site.buildProtocol(None), site.buildProtocol(None)
        for channel in (first, second):
            channel.makeConnection(StringTransport())
        self.assertIsNone(site.buildProtocol(None))
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(site.buildProtocol(None))


class LimitCacheTests(SynchronousTestCase):
    """DuctileSite remembers each target's limit, within a bounded memory."""

    def test_each_target_is_resolved_once_and_memory_is_bounded(self) -> None:
        from twisted.web.resource import Resource

        from ductile.web.limits import BodyLimit, DuctileSite

        asked: list[bytes] = []
        inside = BodyLimit(10, "too large")

        def body_limit_for(path: bytes):
            asked.append(path)
            return inside if path.startswith(b"/in/") else 99

        site = DuctileSite(Resource(), body_limit_for=body_limit_for)
        self.assertIs(site.limit_for_target(b"/in/a?x=1"), inside)
        self.assertIs(site.limit_for_target(b"/in/a?x=1"), inside)
        self.assertEqual(site.limit_for_target(b"/out").max_bytes, 99)
        self.assertEqual(asked, [b"/in/a", b"/out"])
        for i in range(DuctileSite.LIMIT_CACHE_SIZE * 2):
            site.limit_for_target(b"/in/%d" % i)
        self.assertLessEqual(len(site._limits), DuctileSite.LIMIT_CACHE_SIZE)
