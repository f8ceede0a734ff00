"""
In-memory tests of the relay ingress: rows that real HTTP cannot reach
through L{DuctileSite}, and hypothesis properties over arbitrary requests.

A site's channel is driven over a L{StringTransport} (twisted-craft §8), so
thousands of requests run in well under a second with no reactor.
"""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource

from ductile.relay import ingress as ingress_module
from ductile.relay.ingress import ingress_body_limit_for, mount_remote_ingress
from ductile.relay.signing import verify
from ductile.relay.stats import IngressStats
from ductile.web.limits import DuctileSite
from tests.test_relay_ingress import (
    MAX_BODY,
    OTHER_SECRET,
    SECRET,
    VECTOR_EPOCH,
    VECTOR_PATH,
    VECTOR_TIMESTAMP,
    FakeAcceptor,
    Response,
    envelope,
    make_ingress,
    raw_request,
    relay_headers,
)


class Served:
    """The relay on a site, driven in memory."""

    def __init__(self, limited: bool = True, acceptor: FakeAcceptor | None = None) -> None:
        self.ingress = make_ingress()
        self.acceptor = acceptor or FakeAcceptor()
        self.stats = IngressStats()
        clock = task.Clock()
        clock.rightNow = VECTOR_EPOCH
        root = Resource()
        mount_remote_ingress(root, self.ingress, self.acceptor, clock, self.stats)
        if limited:
            self.site: server.Site = DuctileSite(
                root,
                body_limit_for=ingress_body_limit_for(self.ingress, 1 << 20, self.stats),
                reactor=MemoryReactorClock(),
            )
        else:
            self.site = server.Site(root, reactor=MemoryReactorClock())

    def send(self, data: bytes) -> Response:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return Response(transport.value())


class ResourceLevelRowsTests(SynchronousTestCase):
    """Behind a plain Site (no early cap) row 10 sits in its contract place."""

    def test_row10_after_signature_header(self) -> None:
        served = Served(limited=False)
        body = envelope(payload={"pad": "x" * MAX_BODY})
        headers = relay_headers(body=body)
        del headers["X-Ductile-Signature"]
        response = served.send(raw_request(VECTOR_PATH, headers, body))
        self.assertEqual((response.status, response.json()), (403, {"error": "missing relay signature"}))
        headers = relay_headers(body=body, secret="wrong")
        response = served.send(raw_request(VECTOR_PATH, headers, body))
        self.assertEqual((response.status, response.json()), (413, {"error": "relay payload too large"}))

    def test_row17_internal_error(self) -> None:
        """Building the local event fails unexpectedly: 500, logged."""
        served = Served()

        def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("boom")

        self.patch(ingress_module.admission, "admit_baggage", broken)
        body = envelope()
        response = served.send(raw_request(VECTOR_PATH, relay_headers(body=body), body))
        self.assertEqual(
            (response.status, response.body),
            (500, b'{"error":"failed to accept relay request"}\n'),
        )
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(served.acceptor.calls, [])
        self.assertEqual(served.stats.rejected, {"accept_error": 1})

    def test_go_json_escaping(self) -> None:
        """Bodies use Go's json.Encoder escaping (C{<>&})."""
        from ductile.web.json_response import encode_json

        self.assertEqual(encode_json({"a": "<&>\u2028é"}), b'{"a":"\\u003c\\u0026\\u003e\\u2028\xc3\xa9"}\n')

    def test_stats_snapshot(self) -> None:
        served = Served()
        served.send(raw_request("/ingest/peer/nobody", {}, b""))
        snap = served.stats.snapshot()
        self.assertEqual(snap["rejected"]["unknown_peer"], 1)
        self.assertEqual(snap["rejected"]["forbidden" if False else "bad_signature"], 0)
        self.assertEqual(snap["rejected_total"], 1)
        self.assertEqual(snap["accepted"], 0)


_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
)
_header_values = st.one_of(
    _header_text,
    st.sampled_from(
        ["home-primary", "open-peer", "v1", "v2", "", " ", VECTOR_TIMESTAMP,
         "1777802400", "sha256=", "0" * 64]
    ),
)
_relay_header_names = st.sampled_from(
    ["X-Ductile-Peer", "X-Ductile-Timestamp", "X-Ductile-Key-Id",
     "X-Ductile-Signature", "Content-Type", "Expect", "X-Other"]
)
_bodies = st.one_of(
    st.binary(max_size=600),
    st.builds(
        envelope,
        payload=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        event_type=st.sampled_from(["backup.ready"] * 4 + ["Bad_Type", "", "x.y"]),
        origin=st.sampled_from([{}, {"instance": "home-primary"}] * 2 + [{"instance": "lab"}]),
        baggage=st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    ),
    st.binary(min_size=MAX_BODY - 5, max_size=MAX_BODY + 5),
)


class PropertyTests(SynchronousTestCase):
    """Arbitrary requests never yield a 5xx nor reach the acceptor unsigned."""

    @settings(max_examples=300, deadline=None)
    @given(
        peer=st.sampled_from(
            ["home-primary", "home-primary", "open-peer", "nobody", "", "%00", "disabled-peer"]
        ),
        headers=st.dictionaries(_relay_header_names, _header_values, max_size=7),
        body=_bodies,
        sign_it=st.booleans(),
        mutate=st.integers(0, 2),
    )
    def test_no_5xx_and_no_unsigned_accept(
        self, peer: str, headers: dict[str, str], body: bytes, sign_it: bool, mutate: int
    ) -> None:
        served = Served()
        path = f"/ingest/peer/{peer}"
        if sign_it:
            # A correctly signed request for the (possibly fuzzed) timestamp,
            # then at most two fuzzed headers on top, so every later check is
            # reached too.
            mutations = dict(list(headers.items())[:mutate])
            ts = mutations.get("X-Ductile-Timestamp", VECTOR_TIMESTAMP)
            secret = OTHER_SECRET if peer == "open-peer" else SECRET
            headers = relay_headers(
                peer=peer, body=body, secret=secret, timestamp=ts.strip(), path=path
            )
            headers.update(mutations)
        response = served.send(raw_request(path, headers, body))
        self.assertLess(response.status, 500, response.raw[:300])
        self.assertGreaterEqual(response.status, 200, response.raw[:300])
        if served.acceptor.calls:
            self.assertEqual(response.status, 202)
            [(accepted_peer, event, _)] = served.acceptor.calls
            peer_cfg = served.ingress.enabled_peer(accepted_peer)
            assert peer_cfg is not None
            ts = headers["X-Ductile-Timestamp"].strip()
            sig = headers["X-Ductile-Signature"]
            self.assertTrue(
                any(verify(k.secret, "POST", path, ts, body, sig) for k in peer_cfg.keys)
            )
        else:
            self.assertNotEqual(response.status, 202)

    @settings(max_examples=200, deadline=None)
    @given(
        garbage=st.binary(max_size=400),
    )
    def test_raw_garbage_never_5xx(self, garbage: bytes) -> None:
        """Arbitrary bytes after a request line: 4xx or nothing, never 5xx."""
        served = Served()
        response = served.send(b"POST /ingest/peer/home-primary HTTP/1.1\r\n" + garbage)
        if response.raw:
            self.assertLess(response.status, 500, response.raw[:300])
        self.assertEqual(served.acceptor.calls, [])

    @settings(max_examples=150, deadline=None)
    @given(
        payload=st.dictionaries(
            st.text(max_size=6),
            st.recursive(
                st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6),
                lambda inner: st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                max_leaves=8,
            ),
            max_size=4,
        ),
        baggage=st.dictionaries(
            st.sampled_from(["trace_id", "tenant", "Trace_Id", "x"]), st.text(max_size=6), max_size=4
        ),
        event_id=st.text(alphabet="abc- ", max_size=5),
        dedupe_key=st.none() | st.text(max_size=6),
        skew=st.floats(-300, 300),
    )
    def test_valid_signed_envelopes_accepted(
        self,
        payload: dict[str, Any],
        baggage: dict[str, str],
        event_id: str,
        dedupe_key: str | None,
        skew: float,
    ) -> None:
        """Any well-formed, signed envelope within the skew is accepted once."""
        served = Served()
        from ductile.timestamps import format_rfc3339nano

        body = envelope(
            payload=payload,
            baggage=baggage,
            origin={"instance": "home-primary", "event_id": event_id},
            dedupe_key=dedupe_key,
        )
        if len(body) > MAX_BODY:
            return
        ts = format_rfc3339nano(VECTOR_EPOCH + skew)
        response = served.send(
            raw_request(VECTOR_PATH, relay_headers(body=body, timestamp=ts), body)
        )
        self.assertEqual(response.status, 202, response.raw[:300])
        [(peer, event, admitted)] = served.acceptor.calls
        self.assertEqual(event.payload, payload)
        self.assertEqual(event.source, "relay:home-primary")
        self.assertEqual(admitted, {k: v for k, v in baggage.items() if k == "trace_id"})
        self.assertEqual(response.json()["receiver_event_id"], event.event_id)
