"""
Request size limits enforced before a body is buffered.

Twisted's L{HTTPChannel} calls C{request.gotLength(length)} as soon as the
headers are in (C{length} is C{None} for chunked bodies) and then
C{request.handleContentChunk(data)} for every decoded piece of body.  The
stock L{server.Request} buffers those pieces (in memory, or a temporary file
past 100 kB) and renders only once the whole body has arrived, so a limit
checked in a resource comes too late: the bytes are already on disk.
L{LimitedRequest} checks the declared length in C{gotLength} and the running
total in C{handleContentChunk}, and on a breach writes a raw C{413} itself,
stops reading and closes the connection.  The resource is never rendered and
no C{100 Continue} is sent.  Memory stays flat however many oversize uploads
arrive at once.

Which limit applies depends on the path (the relay ingress has its own
C{max_body_size}).  At C{gotLength} time the request object has no C{uri}
or C{path} yet: L{server.Request.requestReceived} sets those only after the
whole body.  The channel does know the request target: C{HTTPChannel.lineReceived}
stores the request line's target as C{channel._path} (with C{_command} and
C{_version}) and keeps it until C{allContentReceived}.  That attribute is
private to Twisted (checked against Twisted 26.10,
C{twisted/web/http.py}); if it is ever missing we fall back to the
site-wide default limit for an empty path.
"""
from __future__ import annotations

from typing import Any, Callable, Union
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.internet import defer
from twisted.web import http, server
from twisted.web.resource import IResource

from ductile.web.json_response import error_body

DEFAULT_TOO_LARGE_MESSAGE = "request body too large"

log = Logger(namespace="ductile.web.limits")


@attrs.frozen
class BodyLimit:
    """
    A body size limit with the C{error} text of its 413 answer.

    C{on_reject}, when given, is called once with the rejected request (its
    headers are in; C{uri} is not) and the number of body bytes declared or
    seen; it replaces the generic log line, so the owner of the path can log
    and count in its own terms.
    """

    max_bytes: int
    message: str = DEFAULT_TOO_LARGE_MESSAGE
    on_reject: Callable[["LimitedRequest", int], None] | None = attrs.field(
        default=None, eq=False
    )


BodyLimitFor = Callable[[bytes], Union[int, BodyLimit]]


def too_large_response(message: str) -> bytes:
    """The complete raw 413 response written by L{LimitedRequest}."""
    body = error_body(message)
    return (
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"\r\n" % (len(body),)
    ) + body


def request_target_path(target: bytes) -> bytes:
    """
    The path part of a raw request target: query dropped, an absolute-form
    target (C{http://host/p}) reduced to its path.
    """
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if b"://" in path:
        rest = path.split(b"://", 1)[1]
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    return path


def path_segments(path: bytes) -> list[bytes]:
    """
    Split and unquote a raw path exactly as Twisted's resource traversal does
    (C{server.Request.process}: split on C{/}, then unquote each segment), so
    a limit keyed on segments matches the resource that would render.
    """
    return [unquote_to_bytes(seg) for seg in path[1:].split(b"/")]


def limit_for_target(body_limit_for: BodyLimitFor | None, target: bytes) -> BodyLimit | None:
    """The limit C{body_limit_for} sets for a raw request target, if any."""
    if body_limit_for is None:
        return None
    limit = body_limit_for(request_target_path(target) if target else b"")
    return limit if isinstance(limit, BodyLimit) else BodyLimit(int(limit))


def prefix_limit_for(
    prefix: str, inside: BodyLimit, default: int | BodyLimit
) -> BodyLimitFor:
    """
    A C{body_limit_for} that applies C{inside} to any path strictly below
    C{prefix} (segment-wise, after Twisted's unquoting) and C{default}
    elsewhere.  C{prefix} C{"/"} means every non-empty single segment and
    deeper.
    """
    want = [seg.encode("utf-8") for seg in prefix.strip("/").split("/") if seg]

    def limit_for(path: bytes) -> int | BodyLimit:
        segments = path_segments(path) if path.startswith(b"/") else []
        if len(segments) > len(want) and segments[: len(want)] == want:
            return inside
        return default

    return limit_for


class LimitedRequest(server.Request):
    """
    A request that refuses bodies over its site's limit before buffering
    them (see the module docstring).  Needs a site with a
    C{body_limit_for(path: bytes) -> int | BodyLimit} attribute, such as
    L{DuctileSite}; without one it behaves like a plain L{server.Request}.
    """

    rejected = False
    _limit: BodyLimit | None = None
    _received = 0

    def _limit_for_target(self) -> BodyLimit | None:
        site = getattr(self.channel, "site", None)
        target = getattr(self.channel, "_path", None)
        target = target if isinstance(target, bytes) else b""
        cached = getattr(site, "limit_for_target", None)
        if cached is not None:
            return cached(target)
        return limit_for_target(getattr(site, "body_limit_for", None), target)

    def gotLength(self, length: int | None) -> None:
        self._limit = self._limit_for_target()
        if (
            length is not None
            and self._limit is not None
            and length > self._limit.max_bytes
        ):
            self._reject(length)
            length = 0  # don't create a temporary file for a body we refuse
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.rejected:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit.max_bytes:
            self._reject(self._received)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # The body may complete within the same read that broke the limit;
        # the 413 is already written, so never render.
        if self.rejected:
            return
        super().requestReceived(command, path, version)

    def _reject(self, size: int) -> None:
        assert self._limit is not None
        self.rejected = True
        # Otherwise the channel answers "100 Continue" after our 413.
        self.requestHeaders.removeHeader(b"expect")
        limit = self._limit
        if limit.on_reject is not None:
            try:
                limit.on_reject(self, size)
            except Exception:
                log.failure("body limit rejection hook failed")
        else:
            log.warn(
                "request body too large: {size} > {limit} bytes from {remote}",
                size=size,
                limit=limit.max_bytes,
                remote=remote_address(self),
                path=_safe_text(getattr(self.channel, "_path", b"")),
            )
        transport = self.channel.transport
        if transport is not None:
            transport.write(too_large_response(limit.message))
        # Stops reading at once and closes after the 413 is flushed; this is
        # what Twisted's own 400 path does.
        self.channel.loseConnection()


class LimitedChannel(http.HTTPChannel):
    """
    Plain HTTP/1.1 with tighter header limits (excess answers 400) and a
    read deadline: a client gets C{readDeadline} seconds from the first byte
    of a request to the last byte of its body.  Twisted's own idle timeout
    restarts on every byte, so without this a client trickling one byte at
    a time could hold a connection (and its buffers) forever.
    """

    maxHeaders = 100
    totalHeadersSize = 16384
    #: Seconds to receive one whole request, as Go's server ReadTimeout (10s).
    readDeadline: float | None = 10.0
    _readTimer: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self._readTimer is None and not self._handlingRequest and self.readDeadline:
            self._readTimer = self.callLater(self.readDeadline, self._readTimedOut)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancelReadTimer()
        super().allContentReceived()

    def connectionLost(self, reason: Any) -> None:
        self._cancelReadTimer()
        super().connectionLost(reason)

    def _cancelReadTimer(self) -> None:
        if self._readTimer is not None:
            if self._readTimer.active():
                self._readTimer.cancel()
            self._readTimer = None

    def _readTimedOut(self) -> None:
        self._readTimer = None
        peer = self.transport.getPeer()
        log.warn(
            "client {remote} did not send a whole request within {deadline}s; closing",
            remote=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}", deadline=self.readDeadline,
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: 35\r\n\r\n"
            b'{"error":"request read timed out"}\n'
        )
        self.transport.loseConnection()


class DuctileSite(server.Site):
    """
    The site for ductile's API and relay ingress: L{LimitedRequest} with a
    per-path body limit, L{LimitedChannel} (plain HTTP/1.1, no H2
    negotiation wrapper), no form parsing of bodies and no per-request
    access log line (the relay logs what it accepts itself, structured).
    """

    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        root: IResource,
        *,
        body_limit_for: BodyLimitFor,
        reactor: IReactorTime | None = None,
        timeout: float = 60.0,
        read_deadline: float | None = 10.0,
        max_connections: int = 1024,
    ) -> None:
        super().__init__(
            root,
            requestFactory=LimitedRequest,
            reactor=reactor,
            timeout=timeout,
            parsePOSTFormSubmission=False,
        )
        self.body_limit_for = body_limit_for
        self.read_deadline = read_deadline
        #: Connections beyond this are closed at once: with the body cap and
        #: the read deadline, memory held by clients stays bounded.
        self.max_connections = max_connections
        self._channels: set[Any] = set()
        self._limits: dict[bytes, BodyLimit | None] = {}

    #: Distinct request targets whose limit is remembered (a client chooses
    #: targets, so the memory is bounded: it starts over when full).
    LIMIT_CACHE_SIZE = 256

    def limit_for_target(self, target: bytes) -> BodyLimit | None:
        """
        L{limit_for_target} of C{body_limit_for}, remembered per target: the
        relay's few peer paths are parsed and unquoted once, not per request.
        """
        try:
            return self._limits[target]
        except KeyError:
            pass
        limit = limit_for_target(self.body_limit_for, target)
        if len(self._limits) >= self.LIMIT_CACHE_SIZE:
            self._limits.clear()
        self._limits[target] = limit
        return limit

    def buildProtocol(self, addr: Any) -> Any:
        if len(self._channels) >= self.max_connections:
            log.warn("refusing a connection from {remote}: {n} connections open (the limit)",
                     remote=str(addr), n=len(self._channels))
            return None
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.readDeadline = self.read_deadline
            self._channels.add(channel)
            lost = channel.connectionLost

            def connection_lost(reason: Any) -> None:
                self._channels.discard(channel)
                lost(reason)

            channel.connectionLost = connection_lost
        return channel

    def log(self, request: Any) -> None:
        """No access log line per request."""

    def close_connections(self, grace: float = 10.0) -> "defer.Deferred[None]":
        """
        Close every client connection once its in-flight requests are
        answered (at most C{grace} seconds, then abort): after
        C{stopListening}, kept-alive connections would otherwise go on
        serving a stopped instance.
        """
        clock = self.reactor
        waits = []
        for channel in list(self._channels):
            requests = [r for r in getattr(channel, "requests", []) if not r.finished]
            if not requests:
                channel.transport.loseConnection()
                continue
            finished = defer.DeferredList([r.notifyFinish() for r in requests], consumeErrors=True)
            finished.addTimeout(grace, clock)
            finished.addBoth(lambda _, c=channel: c.transport.loseConnection())
            waits.append(finished)
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)


def remote_address(request: Any) -> str:
    """C{host:port} of the client, for log lines."""
    try:
        addr = request.getClientAddress()
    except Exception:
        return "unknown"
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None:
        return str(addr)
    return f"{host}:{port}" if port is not None else str(host)


def _safe_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
