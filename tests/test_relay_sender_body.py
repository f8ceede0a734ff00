"""
The bounded, cancellable body reader (ductile.relay.http_body), with fakes.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ductile.relay.http_body import BoundedBody, ResponseBodyTooLarge, read_body_bounded


class FakeTransport:
    def __init__(self) -> None:
        self.stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1


class FakeResponse:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.proto: Any = None

    def deliverBody(self, proto: Any) -> None:
        self.proto = proto
        proto.makeConnection(self.transport)


class BoundedBodyTests(SynchronousTestCase):
    def test_collects_until_done(self) -> None:
        r = FakeResponse()
        d = read_body_bounded(r, 10)
        r.proto.dataReceived(b"abc")
        r.proto.dataReceived(b"defghij")  # exactly the limit
        self.assertNoResult(d)
        r.proto.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d), b"abcdefghij")
        self.assertEqual(r.transport.stopped, 0)

    def test_potential_data_loss_is_a_body(self) -> None:
        r = FakeResponse()
        d = read_body_bounded(r, 10)
        r.proto.dataReceived(b"ab")
        r.proto.connectionLost(Failure(PotentialDataLoss()))
        self.assertEqual(self.successResultOf(d), b"ab")

    def test_other_loss_fails(self) -> None:
        r = FakeResponse()
        d = read_body_bounded(r, 10)
        r.proto.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(d, ConnectionLost)

    def test_overflow_stops_the_transport(self) -> None:
        r = FakeResponse()
        d = read_body_bounded(r, 4)
        r.proto.dataReceived(b"abc")
        r.proto.dataReceived(b"de")
        f = self.failureResultOf(d, ResponseBodyTooLarge)
        self.assertEqual(str(f.value), "response body exceeds 4 bytes")
        self.assertEqual(r.transport.stopped, 1)
        r.proto.dataReceived(b"more")  # ignored after the failure
        r.proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(r.transport.stopped, 1)

    def test_cancel_stops_the_transport(self) -> None:
        r = FakeResponse()
        d = read_body_bounded(r, 10)
        r.proto.dataReceived(b"abc")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(r.transport.stopped, 1)
        r.proto.connectionLost(Failure(ConnectionLost()))  # no second result


class BoundedBodyCallbackTests(SynchronousTestCase):
    """The callable form the sender uses: one report, nothing after abandon."""

    def test_one_report_with_the_bytes(self) -> None:
        got: list[object] = []
        proto = BoundedBody(got.append, 10)
        r = FakeResponse()
        r.deliverBody(proto)
        proto.dataReceived(b"ab")
        proto.dataReceived(b"cd")
        proto.connectionLost(Failure(ResponseDone()))
        proto.connectionLost(Failure(ResponseDone()))
        self.assertEqual(got, [b"abcd"])

    def test_abandon_drops_the_connection_and_reports_nothing(self) -> None:
        got: list[object] = []
        proto = BoundedBody(got.append, 10)
        r = FakeResponse()
        r.deliverBody(proto)
        proto.dataReceived(b"ab")
        proto.abandon()
        self.assertEqual(r.transport.stopped, 1)
        proto.dataReceived(b"cd")
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(got, [])

    def test_overflow_reports_a_failure_once(self) -> None:
        got: list[object] = []
        proto = BoundedBody(got.append, 3)
        r = FakeResponse()
        r.deliverBody(proto)
        proto.dataReceived(b"abcd")
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(got), 1)
        self.assertIsInstance(got[0], Failure)
        self.assertEqual(str(got[0].value), "response body exceeds 3 bytes")
        self.assertEqual(r.transport.stopped, 1)
