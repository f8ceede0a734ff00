"""
A minimal relay receiver written from the contract (§1.2-1.8), for sender tests.

It deliberately does NOT import ductile.relay.signing: its own HMAC code is an
independent reading of the wire contract, so a shared bug cannot hide.
No TestCase lives here; the sender and CLI tests import it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any, Callable

from twisted.internet import defer
from twisted.web import server
from twisted.web.resource import Resource

TS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,9}Z$")


def stub_mac(secret: str, path: bytes, timestamp: bytes, body: bytes) -> str:
    msg = b"POST\n" + path + b"\n" + timestamp + b"\n" + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


class Received:
    def __init__(self, request: Any, body: bytes) -> None:
        self.path = request.path
        self.method = request.method
        self.body = body
        self.headers = {
            k.decode().lower(): v[-1].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.has_key_id = request.requestHeaders.hasHeader(b"x-ductile-key-id")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


class StubReceiver(Resource):
    """
    Answers relay POSTs.

    C{mode}:
      - C{"mimic"}: the receiver's check order (contract §1.7) against its own
        peer table; C{202} acceptance for a valid event.
      - C{"fixed"}: always answer C{(status, headers, body)} from C{answer}.
      - C{"stall"}: send headers and part of a body, then never finish.
      - C{"hangup"}: drop the connection without answering.
      - C{"big"}: answer C{status} with a body of C{big_size} bytes.
      - a callable C{(Received) -> (status, headers, body)} for sequences.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        peer: str = "home-primary",
        secret: str = "s3cret-value",
        key_id: str = "",
        require_key_id: bool = False,
        listen_path: str = "/ingest/peer",
        skew: float = 300.0,
        clock_offset: float = 0.0,
        mode: Any = "mimic",
        answer: tuple[int, dict[str, str], bytes] = (202, {}, b"{}"),
        big_size: int = 200_000,
    ) -> None:
        super().__init__()
        self.peer = peer
        self.secret = secret
        self.key_id = key_id
        self.require_key_id = require_key_id
        self.listen_path = listen_path
        self.skew = skew
        self.clock_offset = clock_offset
        self.mode = mode
        self.answer = answer
        self.big_size = big_size
        self.received: list[Received] = []
        self.stalled: list[Any] = []
        self.verified: list[bool] = []
        #: Fires when the client drops a stalled response's connection.
        self.stall_dropped: defer.Deferred[None] = defer.Deferred()

    def _stall_lost(self, failure: Any) -> None:
        if not self.stall_dropped.called:
            self.stall_dropped.callback(None)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def render_POST(self, request: Any) -> Any:
        body = request.content.read()
        got = Received(request, body)
        self.received.append(got)
        ts = (got.header("x-ductile-timestamp") or "").encode()
        sig = got.header("x-ductile-signature") or ""
        self.verified.append(hmac.compare_digest(stub_mac(self.secret, request.path, ts, body), sig))
        request.setHeader(b"date", formatdate(self.now(), usegmt=True).encode())
        if callable(self.mode):
            status, headers, out = self.mode(got)
            return self._send(request, status, headers, out)
        if self.mode == "fixed":
            status, headers, out = self.answer
            return self._send(request, status, headers, out)
        if self.mode == "stall":
            request.setResponseCode(202)
            request.setHeader(b"content-length", b"1000")
            request.write(b'{"status":')
            self.stalled.append(request)
            request.notifyFinish().addErrback(self._stall_lost)
            return server.NOT_DONE_YET
        if self.mode == "hangup":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if self.mode == "big":
            status = self.answer[0]
            return self._send(request, status, {}, b"x" * self.big_size)
        return self._mimic(request, got)

    def _send(self, request: Any, status: int, headers: dict[str, str], body: bytes) -> bytes:
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k.encode(), v.encode())
        return body

    def _error(self, request: Any, status: int, message: str) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self._send(request, status, {}, json.dumps({"error": message}).encode() + b"\n")

    def _mimic(self, request: Any, got: Received) -> bytes:
        path = request.path.decode()
        prefix = self.listen_path.rstrip("/") + "/"
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            return self._send(request, 404, {}, b"404 page not found\n")
        segment = path[len(prefix):]
        if not segment or segment != self.peer:
            return self._error(request, 403, "unknown relay peer")
        if (got.header("x-ductile-peer") or "").strip() != segment:
            return self._error(request, 403, "peer identity mismatch")
        ts_text = (got.header("x-ductile-timestamp") or "").strip()
        if not ts_text:
            return self._error(request, 403, "missing relay timestamp")
        try:
            ts = datetime.fromisoformat(ts_text).astimezone(timezone.utc).timestamp()
        except ValueError:
            return self._error(request, 403, "invalid relay timestamp")
        if abs(self.now() - ts) > self.skew:
            return self._error(request, 403, "relay timestamp outside allowed clock skew")
        key_id = (got.header("x-ductile-key-id") or "").strip()
        if self.require_key_id and not key_id:
            return self._error(request, 403, "missing relay key id")
        if self.key_id and key_id != self.key_id:
            return self._error(request, 403, "relay key id mismatch")
        if not got.header("x-ductile-signature"):
            return self._error(request, 403, "missing relay signature")
        if not self.verified[-1]:
            return self._error(request, 403, "forbidden")
        try:
            env = json.loads(got.body)
        except ValueError:
            return self._error(request, 400, "invalid JSON body")
        etype = ((env.get("event") or {}).get("type") or "").strip()
        if not etype:
            return self._error(request, 400, "event.type is required")
        request.setHeader(b"content-type", b"application/json")
        return self._send(
            request,
            202,
            {},
            json.dumps(
                {
                    "status": "accepted",
                    "peer": segment,
                    "event_type": etype,
                    "receiver_event_id": "rev-1",
                    "job_id": "rjob-1",
                }
            ).encode()
            + b"\n",
        )


def sequence(*answers: tuple[int, dict[str, str], bytes]) -> Callable[[Received], Any]:
    """A mode answering each request with the next scripted answer."""
    pending = list(answers)

    def mode(got: Received) -> tuple[int, dict[str, str], bytes]:
        return pending.pop(0) if len(pending) > 1 else pending[0]

    return mode


class Served:
    """A stub listening on real loopback, with cleanup for trial."""

    def __init__(self, testcase: Any, stub: StubReceiver, prefix: str = "") -> None:
        from twisted.internet import reactor

        self.stub = stub
        self.site = server.Site(stub)
        self.connections = 0
        build = self.site.buildProtocol

        def counting(addr: Any) -> Any:
            self.connections += 1
            return build(addr)

        self.site.buildProtocol = counting  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{self.port.getHost().port}{prefix}"
        testcase.addCleanup(self.stop)

    def stop(self) -> defer.Deferred[None]:
        for req in self.stub.stalled:
            if not req.finished and req.channel is not None:
                req.channel.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)


def refused_url() -> str:
    """A loopback URL nobody listens on (bind, note the port, close)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
