"""
What one relay delivery attempt came to, and when to try again.

Classification follows the Go sender's wording (contract §1.12) so operators
see the same messages, and adds a retryable/permanent split that Go does not
need (Go never retries): a retry only helps when the receiver or the network
might answer differently next time.
"""
from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping

import attrs

from ductile.config.models import RelayRetry

ACCEPTED = "accepted"
RETRYABLE = "retryable"
PERMANENT = "permanent"

#: Statuses a receiver (or a proxy in front of it) uses for "not now".
RETRYABLE_STATUSES = frozenset({408, 425, 429})


@attrs.frozen
class DeliveryOutcome:
    """
    The result of one signed POST.

    @ivar kind: C{accepted}, C{retryable} or C{permanent}.
    @ivar status: the HTTP status, or C{None} when no response arrived.
    @ivar error: operator-facing text; empty when accepted.
    @ivar acceptance: the receiver's 202 body (contract §1.8) when accepted.
    @ivar retry_after: seconds the receiver asked us to wait, if it said so.
    @ivar duration: seconds from sending to the outcome.
    """

    kind: str
    status: int | None = None
    error: str = ""
    acceptance: Mapping[str, Any] | None = None
    retry_after: float | None = None
    duration: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.kind == ACCEPTED

    @property
    def retryable(self) -> bool:
        return self.kind == RETRYABLE


def _receiver_error(body: bytes) -> str:
    """The C{error} string of a C{{"error": ...}} body, or C{""}."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, str):
            return err.strip()
    return ""


def decode_acceptance(body: bytes) -> Mapping[str, Any]:
    """
    Decode a 202 body into the acceptance object.

    @raise ValueError: with the C{decode relay acceptance: ...} text when the
        body is not a JSON object.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"decode relay acceptance: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(
            f"decode relay acceptance: expected a JSON object, got {type(obj).__name__}"
        )
    return obj


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def classify(status: int, body: bytes) -> tuple[str, str]:
    """
    Classify a received response as C{(kind, error)}.

    Only 202 is acceptance (200 included among the failures, as in Go).  A
    202 whose body is not a JSON object is permanent: the receiver may have
    accepted, but we cannot tell which event it made of it.
    """
    if status == 202:
        try:
            decode_acceptance(body)
        except ValueError as e:
            return PERMANENT, str(e)
        return ACCEPTED, ""
    err = _receiver_error(body)
    text = (
        f"relay receiver rejected request: {err}"
        if err
        else f"relay receiver returned status {status}"
    )
    return (RETRYABLE if is_retryable_status(status) else PERMANENT), text


def transport_error(instance_name: str, err: str) -> str:
    """The Go sender's text for a request that got no usable response."""
    return f"deliver relay request to {instance_name}: {err}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    Seconds to wait from a C{Retry-After} value (RFC 9110 §10.2.3).

    Accepts delta-seconds or an HTTP-date (relative to C{now}, epoch seconds);
    anything else is C{None}.  A date in the past means "now" (C{0.0}).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def retry_delay(attempt: int, retry: RelayRetry, rng: Callable[[], float]) -> float:
    """
    Backoff before the attempt after attempt number C{attempt} (1-based).

    C{min(base * 2**(attempt-1), max_backoff)} plus uniform jitter in
    C{[0, base/4]} (the Go job-retry jitter, contract §8.14); C{rng} returns
    a float in C{[0, 1)}.
    """
    exp = retry.backoff_base * (2 ** max(0, attempt - 1))
    return min(exp, retry.max_backoff) + rng() * retry.backoff_base / 4


def next_delay(
    attempt: int,
    retry: RelayRetry,
    rng: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """
    The delay to actually wait: the larger of our backoff and the receiver's
    C{Retry-After}, never more than C{max_backoff}.
    """
    delay = retry_delay(attempt, retry, rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, retry.max_backoff)
