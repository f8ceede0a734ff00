"""
Pure decisions the relay receiver makes (contract §1.4, §1.7, §1.10, §1.11).

Nothing here touches HTTP or the reactor: the ingress resource feeds these
functions header values and the decoded envelope and maps a L{Rejected} to
its response.  The rows of the contract's error table are named here so the
status, the wire message and the metrics slug can never drift apart.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping

import attrs

from ductile.config.models import Peer, PeerKey
from ductile.relay.envelope import Envelope
from ductile.timestamps import parse_relay_timestamp

#: Contract §1.15: the default, also used for any configured value <= 0.
DEFAULT_ALLOWED_SKEW = 300.0

_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT64_MAX = 2**63 - 1


@attrs.frozen
class Row:
    """One row of the receiver error table (contract §1.7)."""

    status: int
    reason: str  # metrics / log slug (L{ductile.relay.stats.REJECTION_REASONS})
    message: str  # the exact C{error} text on the wire


UNKNOWN_PEER = Row(403, "unknown_peer", "unknown relay peer")
PEER_MISMATCH = Row(403, "peer_mismatch", "peer identity mismatch")
MISSING_TIMESTAMP = Row(403, "missing_timestamp", "missing relay timestamp")
INVALID_TIMESTAMP = Row(403, "invalid_timestamp", "invalid relay timestamp")
CLOCK_SKEW = Row(403, "clock_skew", "relay timestamp outside allowed clock skew")
MISSING_KEY_ID = Row(403, "missing_key_id", "missing relay key id")
KEY_ID_MISMATCH = Row(403, "key_id_mismatch", "relay key id mismatch")
MISSING_SIGNATURE = Row(403, "missing_signature", "missing relay signature")
BODY_READ_ERROR = Row(400, "body_read_error", "failed to read request body")
PAYLOAD_TOO_LARGE = Row(413, "payload_too_large", "relay payload too large")
BAD_SIGNATURE = Row(403, "bad_signature", "forbidden")
INVALID_JSON = Row(400, "invalid_json", "invalid JSON body")
MISSING_EVENT_TYPE = Row(400, "missing_event_type", "event.type is required")
INVALID_EVENT_TYPE = Row(
    400, "invalid_event_type", "event.type must use lower-case dotted form"
)
ORIGIN_MISMATCH = Row(403, "origin_mismatch", "origin instance mismatch")
EVENT_TYPE_NOT_ALLOWED = Row(
    422, "event_type_not_allowed", "event type not allowed for peer"
)
ACCEPT_ERROR = Row(500, "accept_error", "failed to accept relay request")
ENQUEUE_FAILED = Row(500, "enqueue_failed", "failed to enqueue relay event")
#: Extension: Go answers 500 C{failed to enqueue relay event}; a 503 with
#: C{Retry-After} tells a retrying sender this is transient.
STORAGE_UNAVAILABLE = Row(
    503, "storage_unavailable", "relay receiver storage unavailable"
)


class Rejected(Exception):
    """
    The request fails a check; C{fields} are extra structured log fields
    (never secrets, signatures or bodies); a C{failure} field is logged as
    the traceback of an unexpected error.
    """

    def __init__(self, row: Row, **fields: Any) -> None:
        super().__init__(row.message)
        self.row = row
        self.fields = fields


def parse_timestamp_header(text: str) -> float:
    """
    Parse a trimmed C{X-Ductile-Timestamp} value to epoch seconds.

    RFC 3339 (any fraction, any offset) first, then base-10 unix seconds
    that fit Go's C{int64}.  Non-ASCII text is refused outright: Go's parsers
    only know ASCII digits.

    @raise ValueError: when the text is neither form.
    """
    if not text.isascii():
        raise ValueError("timestamp is not ASCII")
    if _ASCII_INTEGER.fullmatch(text) and abs(int(text)) > _INT64_MAX:
        raise ValueError("unix seconds out of int64 range")
    try:
        return parse_relay_timestamp(text)
    except OverflowError as e:  # pragma: no cover - guarded above
        raise ValueError(str(e)) from None


def effective_skew(allowed: float) -> float:
    """Contract §1.4: a configured skew <= 0 means the 5 minute default."""
    return allowed if allowed > 0 else DEFAULT_ALLOWED_SKEW


def check_skew(timestamp: float, now: float, allowed: float) -> float:
    """
    Symmetric skew check; returns the measured delta C{now - timestamp}
    (positive when the sender's clock is behind).

    @raise Rejected: L{CLOCK_SKEW}, with the delta as C{skew_seconds}.
    """
    delta = now - timestamp
    if abs(delta) > effective_skew(allowed):
        raise Rejected(CLOCK_SKEW, skew_seconds=round(delta, 3))
    return delta


def candidate_keys(
    peer: Peer, key_id_header: str, require_key_id: bool
) -> tuple[PeerKey, ...]:
    """
    The keys a signature may be checked against (contract §1.7 rows 6-7,
    plus the key-rotation extension).

    - C{require_key_id} and an empty header: L{MISSING_KEY_ID}.
    - When any of the peer's keys names a key id, the header must equal one
      of them (an empty header included): L{KEY_ID_MISMATCH}; the keys with
      that id are the candidates.
    - Otherwise (the single-key form with no key id) any header is accepted
      and every key is a candidate.

    @raise Rejected: as above.
    """
    if require_key_id and not key_id_header:
        raise Rejected(MISSING_KEY_ID)
    named = [key for key in peer.keys if key.key_id.strip()]
    if named:
        matching = tuple(key for key in named if key.key_id.strip() == key_id_header)
        if not matching:
            raise Rejected(KEY_ID_MISMATCH, key_id=key_id_header)
        return matching
    return tuple(peer.keys)


def derive_dedupe_key(peer: str, envelope: Envelope, signature: str = "") -> str | None:
    """
    Contract §1.10: the explicit key as given when non-blank; else
    C{relay:<peer>:<origin.instance>:<origin.event_id>} (both trimmed) when the
    origin names an event.

    Extension: where Go gives no key (no explicit key, no origin event id) we
    key on the request's signature, C{relay:<peer>:request:<sha256 of it>}, so a
    captured request replayed inside the skew window cannot create a second
    job.  A genuine resend is signed anew (fresh timestamp), so it is still a
    new event — as in Go, a sender without ids gets no cross-attempt dedupe.
    """
    if envelope.dedupe_key.strip():
        return envelope.dedupe_key
    event_id = envelope.origin.event_id.strip()
    if event_id:
        return f"relay:{peer}:{envelope.origin.instance.strip()}:{event_id}"
    sig = signature.strip().lower()
    if sig.startswith("sha256="):
        sig = sig[7:]
    if sig:
        return f"relay:{peer}:request:{hashlib.sha256(sig.encode('ascii', 'replace')).hexdigest()[:32]}"
    return None


def deep_copy_json(value: Any) -> Any:
    """
    A deep copy through a JSON round-trip, as the Go receiver does, so the
    copy holds only plain JSON types and shares nothing with the envelope.
    """
    return json.loads(json.dumps(value))


def admit_baggage(baggage: Mapping[str, Any], allow: Iterable[str]) -> dict[str, Any]:
    """
    Contract §1.11: only top-level keys named in C{allow} (entries trimmed,
    exact match) are kept, values deep-copied; an empty allow list admits
    nothing.
    """
    allowed = {name.strip() for name in allow if name.strip()}
    return {
        key: deep_copy_json(value)
        for key, value in baggage.items()
        if key in allowed
    }


def event_type_allowed(peer: Peer, event_type: str) -> bool:
    """Contract §1.7 row 16: an empty C{accept} list allows every type."""
    accept = [name.strip() for name in peer.accept if name.strip()]
    return not accept or event_type in accept
