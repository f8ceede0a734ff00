"""
The relay's HMAC signature (contract §1.3).

The signed message is C{METHOD\\nPATH\\nTIMESTAMP\\nBODY}: the upper-cased
method, the URL path only, the timestamp header exactly as sent, and the raw
body bytes.  The signature is lowercase hex HMAC-SHA256; verifiers also accept
a C{sha256=} prefix and either hex case.
"""
from __future__ import annotations

import hashlib
import hmac


class SigningError(Exception):
    """The secret is unusable (empty or whitespace)."""


def signing_message(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes the MAC covers."""
    head = "\n".join([method.strip().upper(), path, timestamp.strip()]) + "\n"
    return head.encode("utf-8") + body


def sign(secret: str, method: str, path: str, timestamp: str, body: bytes) -> str:
    """
    Lowercase hex HMAC-SHA256 of L{signing_message}.

    @raise SigningError: when C{secret} is empty or only whitespace.
    """
    if not secret.strip():
        raise SigningError("relay signing failed")
    return hmac.new(
        secret.encode("utf-8"),
        signing_message(method, path, timestamp, body),
        hashlib.sha256,
    ).hexdigest()


def verify(
    secret: str, method: str, path: str, timestamp: str, body: bytes, signature: str
) -> bool:
    """
    Constant-time check of C{signature}; every kind of failure looks the same.
    """
    if not secret.strip():
        return False
    sig = signature.strip()
    if sig[:7].lower() == "sha256=":
        sig = sig[7:]
    try:
        given = bytes.fromhex(sig)
    except ValueError:
        return False
    if len(given) != hashlib.sha256().digest_size:
        return False
    expected = hmac.digest(secret.encode("utf-8"), signing_message(method, path, timestamp, body), "sha256")
    return hmac.compare_digest(expected, given)
