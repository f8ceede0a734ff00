"""
Diagnose a relay link: turn the seed's "What To Check When It Fails" list
into answers.

The probe is a correctly signed request whose envelope has an empty event
type.  The receiver checks peer, identity, timestamp, key id and signature
*before* the event type (contract §1.7), so a fully authenticated probe is
answered C{400 event.type is required} and nothing is enqueued; any earlier
rejection names the first setting that is wrong.  Items the receiver checks
before the failing one are therefore known good, later ones are unknown.
"""
from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Sequence

import attrs

from ductile.config.models import Instance

OK = "ok"
PROBLEM = "problem"
UNKNOWN = "unknown"

#: Remote items in the receiver's check order.
REACH = "api.listen"
ROUTE = "ingress_path"
NAME = "service.name"
CLOCK = "clock skew"
KEY_ID = "key_id"
SECRET = "shared secret"
ACCEPT = "accept"
REMOTE_ORDER = (REACH, ROUTE, NAME, CLOCK, KEY_ID, SECRET)


@attrs.frozen
class CheckItem:
    name: str
    status: str  # ok | problem | unknown
    detail: str

    def line(self) -> str:
        return f"{self.status:<8} {self.name:<14} {self.detail}"


@attrs.frozen
class CheckReport:
    instance: str
    items: tuple[CheckItem, ...]

    @property
    def ok(self) -> bool:
        return not any(i.status == PROBLEM for i in self.items)

    def item(self, name: str) -> CheckItem:
        for i in self.items:
            if i.name == name:
                return i
        raise KeyError(name)

    def lines(self) -> list[str]:
        return [i.line() for i in self.items]

    def to_json(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "ok": self.ok,
            "items": [attrs.asdict(i) for i in self.items],
        }


def probe_body(service_name: str) -> bytes:
    """The envelope the probe sends: signed, attributed, with no event type."""
    return json.dumps(
        {"event": {"type": ""}, "origin": {"instance": service_name}},
        separators=(",", ":"),
    ).encode("utf-8")


def local_items(
    instances: Sequence[Instance], name: str
) -> tuple[list[CheckItem], Instance | None]:
    """
    Check what needs no network: the instance exists, is enabled, and its
    C{secret_ref} resolved to a non-empty secret.

    @return: the items, and the instance when the probe can be sent.
    """
    wanted = name.strip()
    found = [i for i in instances if i.name == wanted]
    if not found:
        return [CheckItem("instance", PROBLEM, f'relay instance "{wanted}" not configured')], None
    enabled = [i for i in found if i.enabled]
    if not enabled:
        return [CheckItem("instance", PROBLEM, f'relay instance "{wanted}" is disabled')], None
    inst = enabled[0]
    items = [CheckItem("instance", OK, f'relay instance "{wanted}" configured, {inst.url}')]
    if not inst.secret.strip():
        items.append(
            CheckItem(
                "secret_ref",
                PROBLEM,
                f'secret_ref "{inst.secret_ref}" does not resolve to a non-empty secret',
            )
        )
        return items, None
    items.append(CheckItem("secret_ref", OK, f'secret_ref "{inst.secret_ref}" resolves locally'))
    return items, inst


def _accept_item(inst: Instance) -> CheckItem:
    allow = ", ".join(inst.allow) if inst.allow else "any type"
    return CheckItem(
        ACCEPT,
        UNKNOWN,
        f"not probed (no event is sent); the receiver peer's accept list must include "
        f"each type relayed (local allow: {allow})",
    )


def _fill(
    failing: str, detail: str, known: dict[str, str], inst: Instance, status: str = PROBLEM
) -> list[CheckItem]:
    """Items before C{failing} are ok, C{failing} gets C{detail}, later ones unknown."""
    out: list[CheckItem] = []
    reached = False
    for name in REMOTE_ORDER:
        if name == failing:
            out.append(CheckItem(name, status, detail))
            reached = True
        elif not reached:
            out.append(CheckItem(name, OK, known[name]))
        else:
            out.append(CheckItem(name, UNKNOWN, "not reached: an earlier check failed"))
    out.append(_accept_item(inst))
    return out


def clock_offset(date_header: str | None, local_now: float) -> float | None:
    """Receiver clock minus ours, from its C{Date} header (1 s resolution)."""
    if not date_header:
        return None
    try:
        when = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp() - local_now


def _describe_offset(offset: float | None) -> str:
    if offset is None:
        return "receiver sent no usable Date header, offset unknown"
    secs = round(offset)
    if secs > 0:
        return f"receiver clock is about {secs}s ahead of this host (from its Date header)"
    if secs < 0:
        return f"receiver clock is about {-secs}s behind this host (from its Date header)"
    return "receiver clock agrees with this host to within a second (from its Date header)"


def _receiver_error(body: bytes) -> str:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        return obj["error"].strip()
    return ""


def diagnose_transport(inst: Instance, service_name: str, error: str) -> list[CheckItem]:
    """No response at all: the receiver's listener is the thing to check."""
    known: dict[str, str] = {}
    return _fill(
        REACH,
        f"could not reach {inst.url}: {error}; check base_url and that the receiver's "
        f"api.listen is enabled and reachable from here",
        known,
        inst,
    )


def diagnose_answer(
    inst: Instance,
    service_name: str,
    status: int,
    body: bytes,
    date_header: str | None,
    local_now: float,
) -> list[CheckItem]:
    """Map the receiver's answer to the probe onto the checklist."""
    err = _receiver_error(body)
    offset = clock_offset(date_header, local_now)
    peer = inst.ingress_path.rstrip("/").rsplit("/", 1)[-1]
    known = {
        REACH: f"receiver answered at {inst.base_url}",
        ROUTE: f"{inst.ingress_path} is a relay route on the receiver",
        NAME: f'receiver knows peer "{service_name}" and it matches the URL',
        CLOCK: f"timestamp accepted; {_describe_offset(offset)}",
        KEY_ID: (
            f'key id "{inst.key_id}" accepted' if inst.key_id else "no key id sent; receiver did not require one"
        ),
        SECRET: f'signature verified: secret_ref "{inst.secret_ref}" matches the receiver\'s',
    }
    if status == 400 and err == "event.type is required":
        return _fill("", "", known, inst)
    if status in (404, 405):
        return _fill(
            ROUTE,
            f"receiver answered {status} for {inst.ingress_path}: ingress_path must be the receiver's "
            f"remote_ingress.listen_path + \"/{service_name}\" and remote_ingress must be configured there",
            known,
            inst,
        )
    if status == 403 and err == "unknown relay peer":
        return _fill(
            NAME,
            f'receiver has no enabled peer "{peer}" (the last segment of ingress_path); it must be '
            f'an enabled remote_ingress.peers[].name there and equal this service.name "{service_name}"',
            known,
            inst,
        )
    if status == 403 and err == "peer identity mismatch":
        return _fill(
            NAME,
            f'service.name "{service_name}" (X-Ductile-Peer) differs from the peer "{peer}" '
            f"at the end of ingress_path; they must be the same",
            known,
            inst,
        )
    if status == 403 and err == "relay timestamp outside allowed clock skew":
        return _fill(
            CLOCK,
            f"timestamp rejected: {_describe_offset(offset)}; fix the clocks (NTP) or raise the "
            f"receiver's remote_ingress.allowed_clock_skew",
            known,
            inst,
        )
    if status == 403 and err in ("missing relay key id", "relay key id mismatch"):
        sent = f'"{inst.key_id}"' if inst.key_id else "none"
        return _fill(
            KEY_ID,
            f"receiver answered \"{err}\": key_id sent is {sent}; it must equal the receiver "
            f"peer's key_id (required when require_key_id: true)",
            known,
            inst,
        )
    if status == 403 and err == "forbidden":
        return _fill(
            SECRET,
            f'signature rejected: secret_ref "{inst.secret_ref}" resolves to a different secret '
            f"here than the receiver peer's secret_ref there",
            known,
            inst,
        )
    said = f' "{err}"' if err else ""
    # An answer the checklist does not explain: report it, claim nothing else.
    return [
        CheckItem(REACH, OK, known[REACH]),
        *[CheckItem(name, UNKNOWN, "not determined") for name in REMOTE_ORDER[1:]],
        CheckItem(
            "answer",
            PROBLEM,
            f"unexpected answer to the probe: status {status}{said} "
            f'(expected 400 "event.type is required")',
        ),
        _accept_item(inst),
    ]
