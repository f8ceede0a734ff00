"""
Counters for the relay receiver, read by the metrics endpoint.

Kept as a plain mutable object owned by the service: the ingress resource
records into it, the API reads L{IngressStats.snapshot}.  Everything runs on
the reactor thread, so no locking is needed.
"""
from __future__ import annotations

from typing import Any

import attrs

#: The reason slugs, one per row of the contract's error table (§1.7), plus
#: the 503 extension.  Fixed so that dashboards can rely on them.
REJECTION_REASONS: tuple[str, ...] = (
    "unknown_peer",  # 1
    "peer_mismatch",  # 2
    "missing_timestamp",  # 3
    "invalid_timestamp",  # 4
    "clock_skew",  # 5
    "missing_key_id",  # 6
    "key_id_mismatch",  # 7
    "missing_signature",  # 8
    "body_read_error",  # 9
    "payload_too_large",  # 10
    "bad_signature",  # 11
    "invalid_json",  # 12
    "missing_event_type",  # 13
    "invalid_event_type",  # 14
    "origin_mismatch",  # 15
    "event_type_not_allowed",  # 16
    "accept_error",  # 17
    "enqueue_failed",  # 18
    "storage_unavailable",  # 503 extension
)


@attrs.define
class IngressStats:
    """Accepted / rejected-by-reason / deduplicated relay requests."""

    accepted: int = 0
    deduplicated: int = 0
    rejected: dict[str, int] = attrs.field(factory=dict)

    def record_accepted(self, deduplicated: bool = False) -> None:
        self.accepted += 1
        if deduplicated:
            self.deduplicated += 1

    def record_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: every known reason is present, zero or not."""
        rejected = {reason: 0 for reason in REJECTION_REASONS}
        rejected.update(self.rejected)
        return {
            "accepted": self.accepted,
            "deduplicated": self.deduplicated,
            "rejected": rejected,
            "rejected_total": self.rejected_total,
        }
