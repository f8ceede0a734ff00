"""
Tests for L{ductile.relay.ingress} through real HTTP on loopback.

Every request goes over a real TCP connection to a running
L{ductile.web.limits.DuctileSite}; the client is a small raw-socket HTTP/1.1
protocol (C{Connection: close}, read until the server closes) so the exact
status line, headers and body bytes are asserted.  The resource's clock is a
L{task.Clock} set to the signed timestamp; the queue is a fake L{Acceptor}.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from ductile.config.models import Peer, PeerKey, RemoteIngress
from ductile.errors import StorageUnavailable
from ductile.events import Event
from ductile.relay import ingress as ingress_module
from ductile.relay.ingress import (
    Acceptance,
    RemoteIngressResource,
    ingress_body_limit_for,
    mount_remote_ingress,
)
from ductile.relay.signing import sign
from ductile.relay.stats import IngressStats
from ductile.web.limits import DuctileSite

SECRET = "lab-shared-secret-v1"
OTHER_SECRET = "open-peer-secret"
ROTATED_SECRET = "lab-shared-secret-v2"

#: The pinned vector (contract §1.3), computed independently with
#:   printf 'POST\n/ingest/peer/home-primary\n2026-05-03T10:00:00.123456Z\n<BODY>' \
#:     | openssl dgst -sha256 -hmac 'lab-shared-secret-v1'
VECTOR_PATH = "/ingest/peer/home-primary"
VECTOR_TIMESTAMP = "2026-05-03T10:00:00.123456Z"
VECTOR_EPOCH = 1777802400.123456
VECTOR_BODY = (
    b'{"event":{"type":"backup.ready","payload":{"archive_id":"nightly-2026-05-03"}},'
    b'"origin":{"instance":"home-primary","event_id":"evt-456"}}'
)
VECTOR_SIGNATURE = "fe37f91a061dce0a5078b55cecd66936b2c959e4788ca13e6eaf34d2680de87b"
#: Same secret, path C{/ingest/peer/home-primary}, timestamp C{1777802400}
#: (unix seconds) and an empty body, also from openssl.
VECTOR_EMPTY_SIGNATURE = (
    "e0620905160b60379cddd14c4d626bb478f3f6ea3a66778abca9c1c33a53f1fb"
)

MAX_BODY = 4096


def make_ingress(**overrides: Any) -> RemoteIngress:
    """The receiver config used by these tests (the seed's, plus peers)."""
    peers = (
        Peer(
            name="home-primary",
            keys=(PeerKey("relay-lab-v1", SECRET, "v1"),),
            accept=("backup.ready",),
            baggage_allow=("trace_id",),
        ),
        Peer(name="open-peer", keys=(PeerKey("open", OTHER_SECRET, ""),)),
        Peer(
            name="rotating",
            keys=(
                PeerKey("relay-lab-v1", SECRET, "v1"),
                PeerKey("relay-lab-v2", ROTATED_SECRET, "v2"),
            ),
        ),
        Peer(
            name="disabled-peer",
            keys=(PeerKey("open", OTHER_SECRET, ""),),
            enabled=False,
        ),
    )
    values: dict[str, Any] = dict(
        listen_path="/ingest/peer",
        max_body_size=MAX_BODY,
        allowed_clock_skew=300.0,
        require_key_id=False,
        peers=peers,
    )
    values.update(overrides)
    return RemoteIngress(**values)


def envelope(
    event_type: str = "backup.ready",
    payload: Mapping[str, Any] | None = None,
    origin: Mapping[str, Any] | None = None,
    baggage: Mapping[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> bytes:
    event: dict[str, Any] = {"type": event_type, "payload": dict(payload if payload is not None else {"a": 1})}
    if dedupe_key is not None:
        event["dedupe_key"] = dedupe_key
    out: dict[str, Any] = {
        "event": event,
        "origin": dict(origin if origin is not None else {"instance": "home-primary"}),
    }
    if baggage is not None:
        out["baggage"] = dict(baggage)
    return json.dumps(out).encode()


def relay_headers(
    peer: str = "home-primary",
    body: bytes = b"",
    secret: str = SECRET,
    key_id: str | None = "v1",
    timestamp: str = VECTOR_TIMESTAMP,
    path: str | None = None,
    signature: str | None = None,
) -> dict[str, str]:
    """Headers as the Go sender writes them, signed over C{body}."""
    path = path if path is not None else f"/ingest/peer/{peer}"
    headers = {
        "Content-Type": "application/json",
        "X-Ductile-Peer": peer,
        "X-Ductile-Timestamp": timestamp,
        "X-Ductile-Signature": (
            signature
            if signature is not None
            else sign(secret, "POST", path, timestamp, body)
        ),
    }
    if key_id is not None:
        headers["X-Ductile-Key-Id"] = key_id
    return headers


def raw_request(
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    method: str = "POST",
    length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


class Response:
    """A parsed raw HTTP/1.1 response."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1]) if lines[0] else 0
        self.headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> bytes | None:
        return self.headers.get(name.lower().encode())


class _Collect(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.chunks))


async def connect(port: int) -> _Collect:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, _Collect())


async def exchange(port: int, *writes: bytes) -> Response:
    """Send C{writes} over one connection, read until the server closes."""
    proto = await connect(port)
    for data in writes:
        proto.transport.write(data)
    return Response(await proto.done)


class FakeAcceptor:
    """Records calls; answers with C{result} (a value, or a callable)."""

    def __init__(self, result: Any = "job-1") -> None:
        self.calls: list[tuple[str, Event, Mapping[str, Any]]] = []
        self.result = result

    def accept(self, peer: str, event: Event, baggage: Mapping[str, Any]) -> Deferred:
        self.calls.append((peer, event, baggage))
        if callable(self.result):
            return self.result(peer, event, baggage)
        return succeed(self.result)


class IngressHTTPTestCase(TestCase):
    """Serves a DuctileSite with the relay mounted, on 127.0.0.1:0."""

    timeout = 15

    def serve(
        self,
        ingress: RemoteIngress | None = None,
        acceptor: FakeAcceptor | None = None,
        now: float = VECTOR_EPOCH,
    ) -> int:
        self.ingress = ingress or make_ingress()
        self.acceptor = acceptor or FakeAcceptor()
        self.clock = task.Clock()
        self.clock.rightNow = now
        self.stats = IngressStats()
        self.logged: list[dict[str, Any]] = []
        self.patch(
            ingress_module,
            "log",
            Logger(namespace="ductile.relay.ingress", observer=self.logged.append),
        )
        root = Resource()
        root.putChild(b"health", Resource())
        mount_remote_ingress(root, self.ingress, self.acceptor, self.clock, self.stats)
        site = DuctileSite(
            root,
            body_limit_for=ingress_body_limit_for(self.ingress, 1024 * 1024, self.stats),
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return self.port

    async def post(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        method: str = "POST",
    ) -> Response:
        return await exchange(self.port, raw_request(path, headers, body, method))

    async def relay(
        self, body: bytes, peer: str = "home-primary", **kw: Any
    ) -> Response:
        path = kw.pop("url_path", f"/ingest/peer/{peer}")
        return await self.post(path, relay_headers(peer=peer, body=body, **kw), body)

    def assertError(self, response: Response, status: int, message: str) -> None:
        self.assertEqual(
            (response.status, response.body),
            (status, json.dumps({"error": message}, separators=(",", ":")).encode() + b"\n"),
        )
        self.assertEqual(response.header("content-type"), b"application/json")
        self.assertEqual(self.acceptor.calls, [])


class SigningVectorTests(IngressHTTPTestCase):
    """The signer, the verifier and openssl agree on fixed vectors."""

    def test_sign_matches_openssl(self) -> None:
        self.assertEqual(
            sign(SECRET, "POST", VECTOR_PATH, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE,
        )
        self.assertEqual(
            sign(SECRET, "POST", VECTOR_PATH, "1777802400", b""),
            VECTOR_EMPTY_SIGNATURE,
        )

    async def test_ingress_accepts_pinned_vector(self) -> None:
        """A request carrying the openssl-computed signature is accepted."""
        self.serve()
        response = await self.post(
            VECTOR_PATH,
            relay_headers(signature=VECTOR_SIGNATURE, body=VECTOR_BODY),
            VECTOR_BODY,
        )
        self.assertEqual(response.status, 202, response.raw)
        self.assertEqual(len(self.acceptor.calls), 1)

    async def test_prefixed_and_uppercase_signature(self) -> None:
        """C{sha256=} prefix and upper-case hex are accepted too."""
        self.serve()
        for sig in ("sha256=" + VECTOR_SIGNATURE, VECTOR_SIGNATURE.upper()):
            response = await self.post(
                VECTOR_PATH, relay_headers(signature=sig, body=VECTOR_BODY), VECTOR_BODY
            )
            self.assertEqual(response.status, 202, response.raw)

    async def test_unix_seconds_timestamp(self) -> None:
        """The second vector: unix-seconds timestamp, signed verbatim."""
        self.serve(now=1777802400.0)
        response = await self.post(
            VECTOR_PATH,
            relay_headers(timestamp="1777802400", signature=VECTOR_EMPTY_SIGNATURE),
            b"",
        )
        # Signature fine; an empty body is not an envelope.
        self.assertError(response, 400, "invalid JSON body")


class AcceptTests(IngressHTTPTestCase):
    """The happy path and what reaches the acceptor."""

    async def test_accepted_shape(self) -> None:
        """202 with Go's body, field order and trailing newline."""
        self.serve()
        response = await self.relay(VECTOR_BODY, signature=VECTOR_SIGNATURE)
        self.assertEqual(response.status, 202)
        self.assertEqual(response.header("content-type"), b"application/json")
        [(peer, event, baggage)] = self.acceptor.calls
        self.assertEqual(
            response.body,
            b'{"status":"accepted","peer":"home-primary","event_type":"backup.ready",'
            b'"receiver_event_id":"' + event.event_id.encode() + b'","job_id":"job-1"}\n',
        )
        self.assertEqual(peer, "home-primary")
        self.assertEqual(event.type, "backup.ready")
        self.assertEqual(event.payload, {"archive_id": "nightly-2026-05-03"})
        self.assertEqual(event.source, "relay:home-primary")
        self.assertEqual(event.timestamp, VECTOR_TIMESTAMP)
        self.assertEqual(event.dedupe_key, "relay:home-primary:home-primary:evt-456")
        self.assertEqual(baggage, {})
        self.assertEqual(self.stats.accepted, 1)
        [accepted] = [e for e in self.logged if e.get("job_id")]
        self.assertEqual(accepted["receiver_event_id"], event.event_id)

    async def test_nothing_routed_omits_job_id(self) -> None:
        self.serve(acceptor=FakeAcceptor(None))
        response = await self.relay(envelope())
        self.assertEqual(response.status, 202)
        self.assertNotIn("job_id", response.json())
        self.assertEqual(response.json()["status"], "accepted")

    async def test_replay_same_job_new_event_id(self) -> None:
        """The same signed bytes twice: 202 twice, new receiver_event_id each time."""
        self.serve(acceptor=FakeAcceptor(Acceptance("job-7", deduplicated=False)))
        first = await self.relay(VECTOR_BODY, signature=VECTOR_SIGNATURE)
        self.acceptor.result = Acceptance("job-7", deduplicated=True)
        second = await self.relay(VECTOR_BODY, signature=VECTOR_SIGNATURE)
        self.assertEqual((first.status, second.status), (202, 202))
        self.assertEqual(first.json()["job_id"], "job-7")
        self.assertEqual(second.json()["job_id"], "job-7")
        self.assertNotEqual(
            first.json()["receiver_event_id"], second.json()["receiver_event_id"]
        )
        keys = {call[1].dedupe_key for call in self.acceptor.calls}
        self.assertEqual(keys, {"relay:home-primary:home-primary:evt-456"})
        self.assertEqual((self.stats.accepted, self.stats.deduplicated), (2, 1))

    async def test_explicit_dedupe_key_and_baggage(self) -> None:
        """Explicit key passes through; only allowed baggage reaches the acceptor."""
        self.serve()
        body = envelope(
            dedupe_key="backup.ready:nightly-2026-05-03",
            baggage={"trace_id": "tr-789", "tenant": "evil", "nested": {"trace_id": 2}},
        )
        response = await self.relay(body)
        self.assertEqual(response.status, 202, response.raw)
        [(_, event, baggage)] = self.acceptor.calls
        self.assertEqual(event.dedupe_key, "backup.ready:nightly-2026-05-03")
        self.assertEqual(baggage, {"trace_id": "tr-789"})

    async def test_request_key_without_origin_event(self) -> None:
        """
        Extension: with no explicit key and no origin event id (Go derives no
        key), the key comes from the request's signature, so the same
        captured request maps to the same key and a fresh signing does not.
        """
        import hashlib

        self.serve()
        body = envelope(origin={})
        later = "2026-05-03T10:00:01.123456Z"  # within the skew window
        first = await self.relay(body, timestamp=VECTOR_TIMESTAMP)
        again = await self.relay(body, timestamp=VECTOR_TIMESTAMP)
        fresh = await self.relay(body, timestamp=later)
        self.assertEqual([r.status for r in (first, again, fresh)], [202, 202, 202])
        keys = [call[1].dedupe_key for call in self.acceptor.calls]
        signature = sign(SECRET, "POST", VECTOR_PATH, VECTOR_TIMESTAMP, body)
        expected = "relay:home-primary:request:" + hashlib.sha256(signature.encode()).hexdigest()[:32]
        self.assertEqual(keys[:2], [expected, expected])
        self.assertNotEqual(keys[2], expected)

    async def test_type_trimmed(self) -> None:
        self.serve()
        response = await self.relay(envelope(event_type="  backup.ready "))
        self.assertEqual(response.json()["event_type"], "backup.ready")
        self.assertEqual(self.acceptor.calls[0][1].type, "backup.ready")

    async def test_headers_trimmed_and_key_rotation(self) -> None:
        """The rotated key is chosen by key id; header values are trimmed."""
        self.serve()
        body = envelope(origin={"instance": "rotating"})
        headers = relay_headers(
            peer="rotating", body=body, secret=ROTATED_SECRET, key_id="v2"
        )
        headers = {k: f"  {v}\t" for k, v in headers.items()}
        response = await self.post("/ingest/peer/rotating", headers, body)
        self.assertEqual(response.status, 202, response.raw)
        # The old key still works under its own id ...
        response = await self.relay(body, peer="rotating", secret=SECRET, key_id="v1")
        self.assertEqual(response.status, 202, response.raw)
        # ... but not under the new key's id.
        self.acceptor.calls.clear()
        response = await self.relay(body, peer="rotating", secret=SECRET, key_id="v2")
        self.assertError(response, 403, "forbidden")

    async def test_anonymous_key_any_key_id(self) -> None:
        """A peer with no key id accepts any key-id header value (or none)."""
        self.serve()
        body = envelope(origin={"instance": "open-peer"}, event_type="anything.goes")
        for key_id in (None, "", "whatever"):
            response = await self.relay(
                body, peer="open-peer", secret=OTHER_SECRET, key_id=key_id
            )
            self.assertEqual(response.status, 202, response.raw)

    async def test_percent_encoded_path_signed_decoded(self) -> None:
        """The signature covers the decoded path, like Go's C{req.URL.Path}."""
        self.serve()
        body = envelope()
        response = await self.post(
            "/ingest/peer/home%2Dprimary?x=1",
            relay_headers(body=body, path="/ingest/peer/home-primary"),
            body,
        )
        self.assertEqual(response.status, 202, response.raw)

    async def test_skew_edges_accepted(self) -> None:
        """Exactly the allowed skew in either direction is still fine."""
        self.serve(now=1777802400.0)
        for ts in ("2026-05-03T10:05:00Z", "2026-05-03T09:55:00Z",
                   "2026-05-03T12:05:00+02:00"):
            response = await self.relay(envelope(), timestamp=ts)
            self.assertEqual(response.status, 202, (ts, response.raw))

    async def test_large_body_under_cap(self) -> None:
        """A body of exactly C{max_body_size} bytes is fine."""
        self.serve()
        body = envelope(payload={"pad": ""})
        body = envelope(payload={"pad": "x" * (MAX_BODY - len(body))})
        self.assertEqual(len(body), MAX_BODY)
        response = await self.relay(body)
        self.assertEqual(response.status, 202, response.raw)


class RejectionTests(IngressHTTPTestCase):
    """Every row of contract §1.7, over HTTP, in order."""

    async def test_row1_unknown_peer(self) -> None:
        self.serve()
        for peer in ("nobody", "disabled-peer"):
            body = envelope(origin={})
            response = await self.relay(body, peer=peer, secret=OTHER_SECRET)
            self.assertError(response, 403, "unknown relay peer")
        response = await self.relay(envelope(), url_path="/ingest/peer/")
        self.assertError(response, 403, "unknown relay peer")
        self.assertEqual(self.stats.rejected, {"unknown_peer": 3})

    async def test_row2_peer_mismatch(self) -> None:
        self.serve()
        body = envelope()
        headers = relay_headers(body=body)
        headers["X-Ductile-Peer"] = "open-peer"
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "peer identity mismatch")
        del headers["X-Ductile-Peer"]
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "peer identity mismatch")

    async def test_row3_missing_timestamp(self) -> None:
        self.serve()
        body = envelope()
        headers = relay_headers(body=body)
        del headers["X-Ductile-Timestamp"]
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "missing relay timestamp")
        headers["X-Ductile-Timestamp"] = "   "
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "missing relay timestamp")

    async def test_row4_invalid_timestamp(self) -> None:
        self.serve()
        for ts in ("yesterday", "2026-05-03 10:00:00", "1.7e9"):
            response = await self.relay(envelope(), timestamp=ts)
            self.assertError(response, 403, "invalid relay timestamp")

    async def test_row5_skew(self) -> None:
        """Past and future beyond the window; the delta is logged."""
        self.serve(now=1777802400.0)
        for ts, delta in (("2026-05-03T10:05:01Z", -301.0), ("1777802099", 301.0)):
            response = await self.relay(envelope(), timestamp=ts)
            self.assertError(response, 403, "relay timestamp outside allowed clock skew")
            self.assertEqual(self.logged[-1]["skew_seconds"], delta)
            self.assertEqual(self.logged[-1]["reason"], "clock_skew")

    async def test_row6_missing_key_id(self) -> None:
        self.serve(ingress=make_ingress(require_key_id=True))
        body = envelope(origin={"instance": "open-peer"})
        response = await self.relay(body, peer="open-peer", secret=OTHER_SECRET, key_id=None)
        self.assertError(response, 403, "missing relay key id")
        response = await self.relay(envelope(), key_id="")
        self.assertError(response, 403, "missing relay key id")

    async def test_row7_key_id_mismatch(self) -> None:
        self.serve()
        for key_id in ("v2", "", None):
            response = await self.relay(envelope(), key_id=key_id)
            self.assertError(response, 403, "relay key id mismatch")

    async def test_row8_missing_signature(self) -> None:
        self.serve()
        body = envelope()
        headers = relay_headers(body=body)
        del headers["X-Ductile-Signature"]
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "missing relay signature")

    async def test_row10_payload_too_large(self) -> None:
        """Over the relay cap (validly signed): 413 with the relay message."""
        self.serve()
        body = envelope(payload={"pad": "x" * MAX_BODY})
        response = await self.relay(body)
        self.assertError(response, 413, "relay payload too large")
        self.assertEqual(self.stats.rejected, {"payload_too_large": 1})
        self.assertEqual(self.logged[-1]["peer"], "home-primary")
        self.assertEqual(self.logged[-1]["size"], len(body))

    async def test_row11_bad_signature(self) -> None:
        self.serve()
        body = envelope()
        bad = [
            {"secret": "wrong-secret"},
            {"signature": "zz" * 32},
            {"signature": VECTOR_SIGNATURE[:-2]},
            {"path": "/other/path"},
            {"signature": "sha1=" + sign(SECRET, "POST", VECTOR_PATH, VECTOR_TIMESTAMP, body)},
        ]
        for kw in bad:
            response = await self.relay(body, **kw)
            self.assertError(response, 403, "forbidden")
        # The body is covered: same headers, one byte changed.
        headers = relay_headers(body=body)
        response = await self.post(VECTOR_PATH, headers, body.replace(b'"a"', b'"b"'))
        self.assertError(response, 403, "forbidden")
        # The timestamp is signed verbatim: an equivalent spelling fails.
        headers = relay_headers(body=body)
        headers["X-Ductile-Timestamp"] = "2026-05-03T12:00:00.123456+02:00"
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "forbidden")

    async def test_row12_invalid_json(self) -> None:
        self.serve()
        for body in (b"", b"not json", b"[1]", b'{"event":{"payload":[1]}}',
                     b'{"event":{"type":"a"}} trailing'):
            response = await self.relay(body)
            self.assertError(response, 400, "invalid JSON body")

    async def test_row13_type_required(self) -> None:
        self.serve()
        for body in (envelope(event_type="  "), b'{"event":{}}'):
            response = await self.relay(body)
            self.assertError(response, 400, "event.type is required")

    async def test_row14_type_form(self) -> None:
        self.serve()
        for event_type in ("Backup.Ready", "jina_reader.scraped", "a..b", "a.", "a\nb"):
            response = await self.relay(envelope(event_type=event_type))
            self.assertError(response, 400, "event.type must use lower-case dotted form")

    async def test_row15_origin_mismatch(self) -> None:
        self.serve()
        response = await self.relay(envelope(origin={"instance": "lab"}))
        self.assertError(response, 403, "origin instance mismatch")

    async def test_row16_not_accepted(self) -> None:
        self.serve()
        response = await self.relay(envelope(event_type="backup.done"))
        self.assertError(response, 422, "event type not allowed for peer")

    async def test_row18_enqueue_failure(self) -> None:
        """An unexpected acceptor failure: 500, logged with the failure."""

        def boom(*args: Any) -> Deferred:
            return defer.fail(RuntimeError("disk on fire"))

        self.serve(acceptor=FakeAcceptor(boom))
        response = await self.relay(envelope())
        self.assertEqual(response.status, 500)
        self.assertEqual(response.body, b'{"error":"failed to enqueue relay event"}\n')
        # Exactly one line, carrying the failure and the rejection fields.
        [failed] = [e for e in self.logged if e.get("reason")]
        self.assertTrue(failed["log_failure"].check(RuntimeError))
        self.assertEqual(failed["peer"], "home-primary")
        self.assertEqual(failed["reason"], "enqueue_failed")
        self.assertEqual(self.stats.rejected, {"enqueue_failed": 1})

    async def test_storage_unavailable_503(self) -> None:
        """Extension: StorageUnavailable answers 503 with Retry-After."""

        def locked(*args: Any) -> Deferred:
            raise StorageUnavailable("database is locked")

        self.serve(acceptor=FakeAcceptor(locked))
        response = await self.relay(envelope())
        self.assertEqual(response.status, 503)
        self.assertEqual(
            response.body, b'{"error":"relay receiver storage unavailable"}\n'
        )
        self.assertEqual(response.header("retry-after"), b"5")
        self.assertEqual(self.stats.rejected, {"storage_unavailable": 1})
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_order_identity_before_timestamp(self) -> None:
        """Several faults at once: the earliest row wins."""
        self.serve()
        headers = {"X-Ductile-Peer": "someone-else"}
        response = await self.post(VECTOR_PATH, headers, b"junk")
        self.assertError(response, 403, "peer identity mismatch")
        headers = {"X-Ductile-Peer": "home-primary", "X-Ductile-Timestamp": "bad"}
        response = await self.post(VECTOR_PATH, headers, b"junk")
        self.assertError(response, 403, "invalid relay timestamp")

    async def test_rejection_logged_once_without_secrets(self) -> None:
        """One structured line per rejection; no secret, signature or body."""
        self.serve()
        body = envelope(payload={"marker": "BODY-MARKER"})
        headers = relay_headers(body=body, secret="wrong")
        response = await self.post(VECTOR_PATH, headers, body)
        self.assertError(response, 403, "forbidden")
        rejections = [e for e in self.logged if e.get("reason")]
        self.assertEqual(len(rejections), 1)
        event = rejections[0]
        self.assertEqual(event["peer"], "home-primary")
        self.assertEqual(event["reason"], "bad_signature")
        self.assertTrue(event["remote"].startswith("127.0.0.1:"))
        text = repr(event)
        for secret in (SECRET, headers["X-Ductile-Signature"], "BODY-MARKER"):
            self.assertNotIn(secret, text)


class RoutingTests(IngressHTTPTestCase):
    """Mounting: one segment only, POST only, plain 404s elsewhere."""

    async def test_deeper_path_404(self) -> None:
        self.serve()
        body = envelope()
        for path in ("/ingest/peer/home-primary/x", "/ingest/peer/home-primary/"):
            response = await self.post(path, relay_headers(body=body, path=path), body)
            self.assertEqual(response.status, 404)
        for path in ("/ingest/peer", "/ingest"):
            response = await self.post(path, {}, b"")
            self.assertEqual(response.status, 404)
        self.assertEqual(self.acceptor.calls, [])

    async def test_non_post_405(self) -> None:
        self.serve()
        for method in ("GET", "PUT", "DELETE", "PATCH", "HEAD"):
            response = await self.post(VECTOR_PATH, {}, b"", method=method)
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.header("allow"), b"POST")
        self.assertEqual(self.acceptor.calls, [])

    async def test_custom_listen_path_reuses_children(self) -> None:
        """C{/api/relay/} (trailing slash dropped) under an existing child."""
        ingress = make_ingress(listen_path=" /api/relay/ ")
        root = Resource()
        api = Resource()
        api.putChild(b"health", Resource())
        root.putChild(b"api", api)
        relay = mount_remote_ingress(
            root, ingress, FakeAcceptor(), task.Clock(), IngressStats()
        )
        self.assertIs(root.children[b"api"], api)
        self.assertIn(b"health", api.children)
        self.assertIsInstance(relay, RemoteIngressResource)
        self.assertIn(b"relay", api.children)

    async def test_root_listen_path(self) -> None:
        """C{listen_path: /}: peers directly under the root, static children win."""
        self.serve(ingress=make_ingress(listen_path="/"))
        body = envelope()
        response = await self.relay(body, url_path="/home-primary", path="/home-primary")
        self.assertEqual(response.status, 202, response.raw)
        response = await self.post("/health", {}, b"", method="GET")
        self.assertNotEqual(response.status, 202)
        self.assertEqual(len(self.acceptor.calls), 1)


class DisconnectTests(IngressHTTPTestCase):
    """A client that goes away before the acceptor answers."""

    async def test_disconnect_cancels_accept_without_errors(self) -> None:
        pending: list[Deferred] = []
        cancelled: Deferred[None] = Deferred()

        def slow(*args: Any) -> Deferred:
            d: Deferred = Deferred(lambda _: cancelled.callback(None))
            pending.append(d)
            return d

        self.serve(acceptor=FakeAcceptor(slow))
        body = envelope()
        proto = await connect(self.port)
        proto.transport.write(raw_request(VECTOR_PATH, relay_headers(body=body), body))
        # Wait until the acceptor has been called, then hang up.
        for _ in range(200):
            if pending:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(pending), 1)
        proto.transport.loseConnection()
        await cancelled
        raw = await proto.done
        self.assertEqual(raw, b"")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.stats.accepted, 0)

    async def test_accept_fires_after_disconnect(self) -> None:
        """
        The commit races the hang-up: the acceptor's canceller fires with a
        job id.  The resource must not write or finish on the lost request.
        """
        pending: list[Deferred] = []

        def committed(*args: Any) -> Deferred:
            d: Deferred = Deferred(lambda d: d.callback("job-late"))
            pending.append(d)
            return d

        self.serve(acceptor=FakeAcceptor(committed))
        body = envelope()
        proto = await connect(self.port)
        proto.transport.write(raw_request(VECTOR_PATH, relay_headers(body=body), body))
        for _ in range(200):
            if pending:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        proto.transport.loseConnection()
        self.assertEqual(await proto.done, b"")
        for _ in range(200):
            if pending[0].called:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.successResultOf(pending[0]), None)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.stats.accepted, 1)
        self.assertTrue(any("went away" in e["log_format"] for e in self.logged))


class SeedExampleTests(IngressHTTPTestCase):
    """The seed's wire example, built with our own Envelope, is accepted."""

    async def test_seed_envelope(self) -> None:
        from ductile.relay.envelope import Envelope, Origin

        body = Envelope(
            event_type="backup.ready",
            payload={
                "archive_path": "/srv/backups/latest.tar.zst",
                "archive_id": "nightly-2026-05-03",
            },
            dedupe_key="backup.ready:nightly-2026-05-03",
            origin=Origin(
                instance="home-primary",
                plugin="backup-runner",
                job_id="job-123",
                event_id="evt-456",
            ),
            baggage={"trace_id": "tr-789"},
        ).to_bytes()
        self.serve()
        response = await self.relay(body)
        self.assertEqual(response.status, 202, response.raw)
        [(peer, event, baggage)] = self.acceptor.calls
        self.assertEqual(event.dedupe_key, "backup.ready:nightly-2026-05-03")
        self.assertEqual(event.payload["archive_id"], "nightly-2026-05-03")
        self.assertEqual(baggage, {"trace_id": "tr-789"})
        self.assertEqual(
            set(response.json()),
            {"status", "peer", "event_type", "receiver_event_id", "job_id"},
        )
