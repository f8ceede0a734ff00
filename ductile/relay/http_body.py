"""
Read an HTTP response body with a size cap, cancellably.

treq's C{content}/C{collect} and Twisted's C{readBody} cannot be cancelled
with a real C{Agent}: a timeout fires but the socket stays open (twisted-craft
§4).  This reader drops the connection with C{transport.stopProducing()} on
cancel and on overflow, so an overall deadline really ends the exchange.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss


class ResponseBodyTooLarge(Exception):
    """The response body exceeded the reader's limit (connection dropped)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body exceeds {limit} bytes")
        self.limit = limit


class _BoundedBody(Protocol):
    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished: defer.Deferred[bytes] | None = finished
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            d, self.finished = self.finished, None
            self.chunks = []
            self.stop()
            d.errback(Failure(ResponseBodyTooLarge(self.limit)))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.finished is None:
            return
        d, self.finished = self.finished, None
        if reason.check(ResponseDone, PotentialDataLoss):
            d.callback(b"".join(self.chunks))
        else:
            d.errback(reason)

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
    proto: _BoundedBody | None = None

    def cancel(d: defer.Deferred[bytes]) -> None:
        if proto is not None:
            proto.finished = None
            proto.stop()

    d: defer.Deferred[bytes] = defer.Deferred(cancel)
    proto = _BoundedBody(d, limit)
    response.deliverBody(proto)
    return d
