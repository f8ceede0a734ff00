"""
The relay envelope: what one instance POSTs to another (contract §1.5).

Decoding follows Go's C{encoding/json} rules so a Go sender's bodies mean the
same here: unknown fields ignored, field names matched case-insensitively,
C{null} payload/baggage become C{{}}, a non-object payload or trailing
garbage is an error.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import attrs


class EnvelopeError(ValueError):
    """The body is not a valid envelope; the message is the wire error text."""


@attrs.frozen
class Origin:
    instance: str = ""
    plugin: str = ""
    job_id: str = ""
    event_id: str = ""


@attrs.frozen
class Envelope:
    event_type: str
    payload: Mapping[str, Any] = attrs.field(factory=dict)
    dedupe_key: str = ""
    origin: Origin = attrs.field(factory=Origin)
    baggage: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The wire shape, as the Go sender writes it (empty parts omitted)."""
        event: dict[str, Any] = {"type": self.event_type, "payload": dict(self.payload)}
        if self.dedupe_key:
            event["dedupe_key"] = self.dedupe_key
        origin = {k: v for k, v in attrs.asdict(self.origin).items() if v}
        out: dict[str, Any] = {"event": event, "origin": origin}
        if self.baggage:
            out["baggage"] = dict(self.baggage)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=False).encode(
            "utf-8"
        )


_ABSENT = object()


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """Go's case-insensitive field lookup (an exact match wins)."""
    value = obj.get(name, _ABSENT)
    if value is not _ABSENT:
        return value
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _string(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EnvelopeError("invalid JSON body")
    return value


def _object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EnvelopeError("invalid JSON body")
    return value


def decode_envelope(body: bytes) -> Envelope:
    """
    Parse a request body into an L{Envelope}.

    Does not validate the event type: the receiver's checks (contract §1.7
    rows 13-14) come after decoding and have their own messages.

    @raise EnvelopeError: C{"invalid JSON body"} for anything Go would refuse.
    """
    try:
        text = body.decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("invalid JSON body") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("invalid JSON body")
    event = _object(_field(obj, "event"))
    origin = _object(_field(obj, "origin"))
    return Envelope(
        event_type=_string(_field(event, "type")),
        payload=_object(_field(event, "payload")),
        dedupe_key=_string(_field(event, "dedupe_key")),
        origin=Origin(
            instance=_string(_field(origin, "instance")),
            plugin=_string(_field(origin, "plugin")),
            job_id=_string(_field(origin, "job_id")),
            event_id=_string(_field(origin, "event_id")),
        ),
        baggage=_object(_field(obj, "baggage")),
    )
