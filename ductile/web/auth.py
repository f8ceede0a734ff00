"""
Bearer-token authentication and scopes for the HTTP API (contract §6).
"""
from __future__ import annotations

import hmac
from typing import Iterable, Sequence

import attrs

from ductile.config.models import ApiToken, Config

#: A scope grants itself and everything listed here.
IMPLIES: dict[str, tuple[str, ...]] = {
    "plugin:rw": ("plugin:ro", "plugin:catalog:ro", "plugin:invoke:ro"),
    "plugin:ro": ("plugin:catalog:ro",),
    "jobs:rw": ("jobs:ro", "jobs:status:ro", "jobs:tree:ro", "jobs:logs:ro", "jobs:result:ro"),
    "jobs:ro": ("jobs:status:ro", "jobs:tree:ro", "jobs:logs:ro", "jobs:result:ro"),
    "events:rw": ("events:ro",),
    "relay:rw": ("relay:ro",),
    "system:rw": ("system:ro",),
}


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    todo = list(scopes)
    while todo:
        scope = todo.pop().strip()
        if scope and scope not in out:
            out.add(scope)
            todo.extend(IMPLIES.get(scope, ()))
    return frozenset(out)


@attrs.frozen
class Principal:
    label: str
    scopes: frozenset[str]

    def allows(self, any_of: Sequence[str]) -> bool:
        return "*" in self.scopes or any(s in self.scopes for s in any_of)


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Authenticator:
    """
    Checks C{Authorization: Bearer <token>} against C{api.auth.tokens} and
    the C{tokens.yaml} entries that carry scopes, in constant time per token.
    """

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = [(t.token.encode("utf-8"), Principal(t.label, expand_scopes(t.scopes))) for t in tokens]

    @classmethod
    def from_config(cls, config: Config) -> "Authenticator":
        # The loader already folds scoped tokens.yaml entries into api.tokens.
        return cls(config.api.tokens)

    def authenticate(self, header: bytes | None) -> Principal:
        if not header or not header.startswith(b"Bearer "):
            raise AuthError(401, "missing bearer token")
        given = header[len(b"Bearer "):].strip()
        found = None
        for token, principal in self._tokens:
            # Compare against every token so timing does not reveal which matched.
            if hmac.compare_digest(token, given) and found is None:
                found = principal
        if found is None:
            raise AuthError(401, "invalid token")
        return found

    def authorize(self, header: bytes | None, any_of: Sequence[str]) -> Principal:
        principal = self.authenticate(header)
        if not principal.allows(any_of):
            raise AuthError(403, f"token lacks scope (needs one of: {', '.join(any_of)})")
        return principal
