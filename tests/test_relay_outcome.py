"""
Outcome classification, Retry-After parsing and backoff (ductile.relay.outcome).
"""
from __future__ import annotations

from email.utils import formatdate

from twisted.trial.unittest import SynchronousTestCase

from ductile.config.models import RelayRetry
from ductile.relay.outcome import (
    classify,
    decode_acceptance,
    next_delay,
    parse_retry_after,
    retry_delay,
    transport_error,
)


class ClassifyTests(SynchronousTestCase):
    def test_only_202_object_accepted(self) -> None:
        self.assertEqual(classify(202, b'{"status":"accepted"}'), ("accepted", ""))
        self.assertEqual(decode_acceptance(b'{"job_id":"j"}'), {"job_id": "j"})

    def test_202_bad_body(self) -> None:
        kind, err = classify(202, b"not json")
        self.assertEqual(kind, "permanent")
        self.assertTrue(err.startswith("decode relay acceptance: "), err)
        kind, err = classify(202, b'"str"')
        self.assertEqual(
            (kind, err), ("permanent", "decode relay acceptance: expected a JSON object, got str")
        )

    def test_error_text(self) -> None:
        self.assertEqual(
            classify(403, b'{"error":"forbidden"}\n'),
            ("permanent", "relay receiver rejected request: forbidden"),
        )
        self.assertEqual(classify(200, b"{}"), ("permanent", "relay receiver returned status 200"))
        self.assertEqual(
            classify(404, b"404 page not found"), ("permanent", "relay receiver returned status 404")
        )
        self.assertEqual(
            classify(400, b'{"error":"  "}'), ("permanent", "relay receiver returned status 400")
        )

    def test_retryable_statuses(self) -> None:
        for status in (408, 425, 429, 500, 502, 503, 504, 599):
            self.assertEqual(classify(status, b"")[0], "retryable", status)
        for status in (200, 201, 204, 301, 400, 401, 403, 404, 409, 413, 422):
            self.assertEqual(classify(status, b"")[0], "permanent", status)

    def test_transport_error(self) -> None:
        self.assertEqual(transport_error("lab", "boom"), "deliver relay request to lab: boom")


class RetryAfterTests(SynchronousTestCase):
    def test_delta_seconds(self) -> None:
        self.assertEqual(parse_retry_after("120", 0.0), 120.0)
        self.assertEqual(parse_retry_after(" 0 ", 0.0), 0.0)

    def test_http_date(self) -> None:
        now = 1_777_777_777.0
        self.assertEqual(parse_retry_after(formatdate(now + 30, usegmt=True), now), 30.0)
        self.assertEqual(parse_retry_after(formatdate(now - 30, usegmt=True), now), 0.0)

    def test_garbage(self) -> None:
        for value in (None, "", "-5", "soon", "1.5"):
            self.assertIsNone(parse_retry_after(value, 0.0), value)


class RetryDelayTests(SynchronousTestCase):
    retry = RelayRetry(max_attempts=10, backoff_base=30.0, max_backoff=3600.0)

    def test_exponential_with_jitter(self) -> None:
        zero = lambda: 0.0  # noqa: E731
        self.assertEqual([retry_delay(n, self.retry, zero) for n in (1, 2, 3, 4)], [30, 60, 120, 240])
        self.assertEqual(retry_delay(1, self.retry, lambda: 0.5), 30 + 3.75)
        self.assertEqual(retry_delay(3, self.retry, lambda: 0.999), 120 + 0.999 * 7.5)

    def test_capped(self) -> None:
        self.assertEqual(retry_delay(10, self.retry, lambda: 0.0), 3600.0)
        self.assertEqual(retry_delay(10, self.retry, lambda: 1.0), 3600.0 + 7.5)

    def test_next_delay_uses_larger_and_caps(self) -> None:
        zero = lambda: 0.0  # noqa: E731
        self.assertEqual(next_delay(1, self.retry, zero, None), 30.0)
        self.assertEqual(next_delay(1, self.retry, zero, 10.0), 30.0)
        self.assertEqual(next_delay(1, self.retry, zero, 90.0), 90.0)
        self.assertEqual(next_delay(1, self.retry, zero, 99999.0), 3600.0)
        self.assertEqual(next_delay(12, self.retry, lambda: 1.0, None), 3600.0)
