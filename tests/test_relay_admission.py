"""
Tests for L{ductile.relay.admission}: the receiver's pure decisions.
"""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ductile.config.models import Peer, PeerKey
from ductile.relay import admission
from ductile.relay.admission import Rejected
from ductile.relay.envelope import Envelope, Origin


def _peer(*keys: PeerKey, accept: tuple[str, ...] = ()) -> Peer:
    return Peer(name="home-primary", keys=keys, accept=accept)


class DedupeKeyTests(SynchronousTestCase):
    """Contract §1.10."""

    def test_explicit_key_used_as_given(self) -> None:
        """A non-blank explicit key wins, untrimmed, over the origin."""
        env = Envelope(
            event_type="backup.ready",
            dedupe_key=" backup.ready:n1 ",
            origin=Origin(instance="home-primary", event_id="evt-456"),
        )
        self.assertEqual(
            admission.derive_dedupe_key("home-primary", env), " backup.ready:n1 "
        )

    def test_derived_from_origin(self) -> None:
        """No key: C{relay:<peer>:<origin.instance>:<origin.event_id>}, trimmed."""
        env = Envelope(
            event_type="backup.ready",
            dedupe_key="   ",
            origin=Origin(instance=" home-primary ", event_id=" evt-456 "),
        )
        self.assertEqual(
            admission.derive_dedupe_key("home-primary", env),
            "relay:home-primary:home-primary:evt-456",
        )

    def test_derived_with_empty_instance(self) -> None:
        """An empty origin instance leaves an empty field."""
        env = Envelope(event_type="x", origin=Origin(event_id="evt-456"))
        self.assertEqual(
            admission.derive_dedupe_key("home-primary", env),
            "relay:home-primary::evt-456",
        )

    def test_none_without_key_or_event_id(self) -> None:
        """No explicit key and no origin event id: no key at all."""
        env = Envelope(event_type="x", origin=Origin(instance="home-primary"))
        self.assertIsNone(admission.derive_dedupe_key("home-primary", env))


class BaggageTests(SynchronousTestCase):
    """Contract §1.11."""

    def test_only_allowed_top_level_keys(self) -> None:
        """Keys not named in the allow list are dropped; allow entries trimmed."""
        bag = {"trace_id": "tr-789", "secret": "x", "nested": {"trace_id": 1}}
        self.assertEqual(
            admission.admit_baggage(bag, [" trace_id "]), {"trace_id": "tr-789"}
        )

    def test_empty_allow_admits_nothing(self) -> None:
        self.assertEqual(admission.admit_baggage({"trace_id": "t"}, []), {})

    def test_exact_match(self) -> None:
        """Matching is exact: case and prefixes do not count."""
        bag = {"Trace_ID": 1, "trace_id_x": 2}
        self.assertEqual(admission.admit_baggage(bag, ["trace_id"]), {})

    def test_values_deep_copied(self) -> None:
        """The admitted value shares nothing with the envelope."""
        inner = {"a": [1, 2]}
        out = admission.admit_baggage({"ctx": inner}, ["ctx"])
        self.assertEqual(out, {"ctx": {"a": [1, 2]}})
        inner["a"].append(3)
        self.assertEqual(out, {"ctx": {"a": [1, 2]}})


class TimestampTests(SynchronousTestCase):
    """Contract §1.4."""

    def test_rfc3339_any_offset(self) -> None:
        self.assertEqual(
            admission.parse_timestamp_header("2026-05-03T12:00:00+02:00"),
            1777802400.0,
        )

    def test_unix_seconds(self) -> None:
        self.assertEqual(admission.parse_timestamp_header("1777802400"), 1777802400.0)

    def test_rejects_garbage(self) -> None:
        for text in ["yesterday", "2026-05-03", "2026-13-03T10:00:00Z", "1.5e9"]:
            self.assertRaises(ValueError, admission.parse_timestamp_header, text)

    def test_rejects_non_ascii_digits(self) -> None:
        """Unicode digits would pass Python's C{\\d}; Go refuses them."""
        self.assertRaises(
            ValueError, admission.parse_timestamp_header, "\uff11\uff17\uff17\uff17"
        )

    def test_rejects_out_of_int64(self) -> None:
        self.assertRaises(ValueError, admission.parse_timestamp_header, "9" * 30)
        self.assertRaises(ValueError, admission.parse_timestamp_header, "9" * 400)

    def test_skew_symmetric(self) -> None:
        """Past and future beyond the window are refused; the edge is allowed."""
        self.assertEqual(admission.check_skew(1000.0, 1300.0, 300.0), 300.0)
        self.assertEqual(admission.check_skew(1300.0, 1000.0, 300.0), -300.0)
        for ts in (999.0, 1601.0):
            e = self.assertRaises(Rejected, admission.check_skew, ts, 1300.0, 300.0)
            self.assertIs(e.row, admission.CLOCK_SKEW)
            self.assertEqual(e.fields["skew_seconds"], 1300.0 - ts)

    def test_non_positive_skew_means_default(self) -> None:
        self.assertEqual(admission.effective_skew(0), 300.0)
        self.assertEqual(admission.effective_skew(-1), 300.0)
        self.assertEqual(admission.effective_skew(10), 10)
        admission.check_skew(0.0, 299.0, 0)


class CandidateKeyTests(SynchronousTestCase):
    """Contract §1.7 rows 6-7 plus key rotation."""

    one = PeerKey("ref", "s1", "v1")
    anon = PeerKey("ref", "s0", "")
    two = PeerKey("ref2", "s2", "v2")

    def _rejected(self, peer: Peer, header: str, require: bool) -> admission.Row:
        e = self.assertRaises(
            Rejected, admission.candidate_keys, peer, header, require
        )
        return e.row

    def test_require_key_id_and_empty_header(self) -> None:
        self.assertIs(
            self._rejected(_peer(self.anon), "", True), admission.MISSING_KEY_ID
        )
        self.assertIs(
            self._rejected(_peer(self.one), "", True), admission.MISSING_KEY_ID
        )

    def test_key_id_mismatch(self) -> None:
        """A configured key id must match, an empty header included."""
        self.assertIs(
            self._rejected(_peer(self.one), "v9", False), admission.KEY_ID_MISMATCH
        )
        self.assertIs(
            self._rejected(_peer(self.one), "", False), admission.KEY_ID_MISMATCH
        )

    def test_anonymous_key_accepts_any_header(self) -> None:
        self.assertEqual(
            admission.candidate_keys(_peer(self.anon), "whatever", False), (self.anon,)
        )
        self.assertEqual(admission.candidate_keys(_peer(self.anon), "", False), (self.anon,))

    def test_rotation_selects_by_header(self) -> None:
        peer = _peer(self.one, self.two)
        self.assertEqual(admission.candidate_keys(peer, "v2", True), (self.two,))
        self.assertEqual(admission.candidate_keys(peer, "v1", False), (self.one,))
        self.assertIs(self._rejected(peer, "v3", False), admission.KEY_ID_MISMATCH)


class AcceptListTests(SynchronousTestCase):
    def test_empty_accepts_all(self) -> None:
        self.assertTrue(admission.event_type_allowed(_peer(), "anything"))

    def test_listed_only(self) -> None:
        peer = _peer(accept=("backup.ready",))
        self.assertTrue(admission.event_type_allowed(peer, "backup.ready"))
        self.assertFalse(admission.event_type_allowed(peer, "backup.done"))


class RowTableTests(SynchronousTestCase):
    """The error table is binding: statuses and messages as in contract §1.7."""

    def test_table(self) -> None:
        expected = [
            (403, "unknown relay peer"),
            (403, "peer identity mismatch"),
            (403, "missing relay timestamp"),
            (403, "invalid relay timestamp"),
            (403, "relay timestamp outside allowed clock skew"),
            (403, "missing relay key id"),
            (403, "relay key id mismatch"),
            (403, "missing relay signature"),
            (400, "failed to read request body"),
            (413, "relay payload too large"),
            (403, "forbidden"),
            (400, "invalid JSON body"),
            (400, "event.type is required"),
            (400, "event.type must use lower-case dotted form"),
            (403, "origin instance mismatch"),
            (422, "event type not allowed for peer"),
            (500, "failed to accept relay request"),
            (500, "failed to enqueue relay event"),
        ]
        rows = [
            admission.UNKNOWN_PEER,
            admission.PEER_MISMATCH,
            admission.MISSING_TIMESTAMP,
            admission.INVALID_TIMESTAMP,
            admission.CLOCK_SKEW,
            admission.MISSING_KEY_ID,
            admission.KEY_ID_MISMATCH,
            admission.MISSING_SIGNATURE,
            admission.BODY_READ_ERROR,
            admission.PAYLOAD_TOO_LARGE,
            admission.BAD_SIGNATURE,
            admission.INVALID_JSON,
            admission.MISSING_EVENT_TYPE,
            admission.INVALID_EVENT_TYPE,
            admission.ORIGIN_MISMATCH,
            admission.EVENT_TYPE_NOT_ALLOWED,
            admission.ACCEPT_ERROR,
            admission.ENQUEUE_FAILED,
        ]
        self.assertEqual([(r.status, r.message) for r in rows], expected)
        from ductile.relay.stats import REJECTION_REASONS

        self.assertEqual(
            [r.reason for r in rows] + ["storage_unavailable"], list(REJECTION_REASONS)
        )
