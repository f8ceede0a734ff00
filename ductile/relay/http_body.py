"""
HTTP bodies for the relay sender: the request body as an in-memory
producer, and a response reader with a size cap that can be cancelled.

treq's C{content}/C{collect} and Twisted's C{readBody} cannot be cancelled
with a real C{Agent}: a timeout fires but the socket stays open (twisted-craft
§4).  L{BoundedBody} drops the connection with C{transport.stopProducing()}
on cancel and on overflow, so an overall deadline really ends the exchange.
It reports to a plain callable, so the sender needs no Deferred of its own
per body; L{read_body_bounded} is the Deferred-returning form.
"""
from __future__ import annotations

from typing import Any, Callable, Union

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


class ResponseBodyTooLarge(Exception):
    """The response body exceeded the reader's limit (connection dropped)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body exceeds {limit} bytes")
        self.limit = limit


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one piece.

    Twisted's C{FileBodyProducer} (what treq uses for C{data=}) writes from a
    cooperator task, one reactor iteration after the headers; a relay
    envelope is a few hundred bytes, so it goes out with the headers.
    The length is known, so the request is framed by C{Content-Length}.
    """

    __slots__ = ("body", "length")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        """Everything was written at once; nothing to pause."""

    def resumeProducing(self) -> None:
        """Everything was written at once; nothing to resume."""

    def stopProducing(self) -> None:
        """Everything was written at once; nothing to stop."""


#: What a L{BoundedBody} reports: the body, or why there is none.
BodyResult = Union[bytes, Failure]


class BoundedBody(Protocol):
    """
    Collect a response body of at most C{limit} bytes and report it once.

    C{done} is called exactly once, unless L{abandon} came first: with the
    bytes on a clean end (or C{PotentialDataLoss}, a body framed by the
    connection's close), or with a L{Failure}: L{ResponseBodyTooLarge} (the
    connection is dropped) or the reason the body stopped.
    """

    def __init__(self, done: Callable[[BodyResult], None], limit: int) -> None:
        self.done: Callable[[BodyResult], None] | None = done
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.done is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            done, self.done = self.done, None
            self.chunks = []
            self.stop()
            done(Failure(ResponseBodyTooLarge(self.limit)))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done is None:
            return
        done, self.done = self.done, None
        if reason.check(ResponseDone, PotentialDataLoss):
            chunks = self.chunks
            done(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        else:
            done(reason)

    def abandon(self) -> None:
        """Report nothing more, and drop the connection."""
        self.done = None
        self.chunks = []
        self.stop()

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def read_body_bounded(response: Any, limit: int) -> defer.Deferred[bytes]:
    """
    Collect C{response}'s body, at most C{limit} bytes.

    @return: a Deferred firing with the bytes; it errbacks with
        L{ResponseBodyTooLarge} on overflow and, when cancelled, drops the
        connection before failing with C{CancelledError}.
    """
    proto: BoundedBody | None = None

    def cancel(d: defer.Deferred[bytes]) -> None:
        if proto is not None:
            proto.abandon()

    d: defer.Deferred[bytes] = defer.Deferred(cancel)

    def done(result: BodyResult) -> None:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    proto = BoundedBody(done, limit)
    response.deliverBody(proto)
    return d
