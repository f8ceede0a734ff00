"""
API bearer tokens: compared in constant time against every configured
token, and refusals that say nothing about how close a guess was.
"""
from __future__ import annotations

import hmac

from twisted.trial.unittest import SynchronousTestCase

from ductile.config.models import ApiToken
from ductile.web import auth as auth_module
from ductile.web.auth import Authenticator, AuthError

TOKENS = (
    ApiToken("first-token-aaaaaaaa", ("jobs:ro",), "api.auth.tokens[0]"),
    ApiToken("second-token-bbbbbbb", ("*",), "api.auth.tokens[1]"),
    ApiToken("x", ("relay:ro",), "short"),
)


class ConstantTimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def counting(a: bytes, b: bytes) -> bool:
            self.calls.append((a, b))
            return real(a, b)

        self.patch(auth_module.hmac, "compare_digest", counting)
        self.auth = Authenticator(TOKENS)

    def test_every_token_compared_whichever_matches(self) -> None:
        """
        Matching the first, the last or no token costs the same number of
        constant-time comparisons (one per configured token), so timing
        does not reveal which token matched or how many exist before it.
        """
        for header in (b"Bearer first-token-aaaaaaaa", b"Bearer x", b"Bearer nope", b"Bearer first-token-aaaaaaab"):
            self.calls.clear()
            try:
                self.auth.authenticate(header)
            except AuthError:
                pass
            self.assertEqual(len(self.calls), len(TOKENS), header)
            self.assertEqual([a for a, _ in self.calls], [t.token.encode() for t in TOKENS])

    def test_no_plain_equality_on_tokens(self) -> None:
        """The right principal comes back through compare_digest alone."""
        self.assertEqual(self.auth.authenticate(b"Bearer second-token-bbbbbbb").label, "api.auth.tokens[1]")

    def test_near_misses_get_the_same_answer(self) -> None:
        """A prefix, a one-character change, a longer string, garbage: one message."""
        answers = set()
        for guess in (b"first-token-aaaaaaa", b"first-token-aaaaaaab", b"first-token-aaaaaaaaa", b"zzz", b"\xff\xfe"):
            with self.assertRaises(AuthError) as caught:
                self.auth.authenticate(b"Bearer " + guess)
            answers.add((caught.exception.status, caught.exception.message))
        self.assertEqual(answers, {(401, "invalid token")})

    def test_missing_or_malformed_header(self) -> None:
        for header in (None, b"", b"Basic Zm9vOmJhcg=="):
            with self.assertRaises(AuthError) as caught:
                self.auth.authenticate(header)
            self.assertEqual((caught.exception.status, caught.exception.message), (401, "missing bearer token"))

    def test_token_never_in_repr(self) -> None:
        for token in TOKENS:
            self.assertNotIn(token.token, repr(token))
        self.assertNotIn("first-token", repr(self.auth.authenticate(b"Bearer first-token-aaaaaaaa")))
