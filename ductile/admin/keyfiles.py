"""
The manhole's host key and its C{authorized_keys} file.

The authorized keys file is read strictly: one OpenSSH public key per line
(C{ssh-ed25519 AAAA... comment}), blank lines and C{#} comments ignored.
OpenSSH key options (C{from="..."}, C{no-pty}, ...) are not supported and
are refused rather than silently dropped, since dropping a C{from=}
restriction would widen access.
"""
from __future__ import annotations

from twisted.conch.ssh import keys

from ductile.admin.errors import AdminConfigError

_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-")


def _is_key_type(token: str) -> bool:
    return token.startswith(_KEY_TYPE_PREFIXES)


def _read(path: str, what: str) -> bytes:
    if not path:
        raise AdminConfigError(f"admin.manhole.{what} is not set")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise AdminConfigError(f"admin.manhole.{what}: {path} does not exist") from None
    except OSError as e:
        raise AdminConfigError(f"admin.manhole.{what}: cannot read {path}: {e.strerror}") from None


def load_host_key(path: str) -> keys.Key:
    """
    The server's private host key (OpenSSH or PEM format; ed25519, ECDSA or
    RSA, e.g. from C{ssh-keygen -t ed25519 -N "" -f host_key}).
    """
    data = _read(path, "host_key")
    try:
        key = keys.Key.fromString(data)
    except keys.EncryptedKeyError:
        raise AdminConfigError(
            f"admin.manhole.host_key: {path} is passphrase-protected; the host key must be unencrypted "
            "(ssh-keygen -N \"\")"
        ) from None
    except (keys.BadKeyError, ValueError) as e:
        raise AdminConfigError(f"admin.manhole.host_key: {path} is not a private SSH key ({e})") from None
    if key.isPublic():
        raise AdminConfigError(
            f"admin.manhole.host_key: {path} holds a public key; give the private key file (without .pub)"
        )
    return key


def load_authorized_keys(path: str) -> list[keys.Key]:
    """Every public key in an OpenSSH C{authorized_keys} file; at least one."""
    data = _read(path, "authorized_keys")
    out: list[keys.Key] = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        tokens = line.decode("utf-8", "replace").split()
        where = f"admin.manhole.authorized_keys: {path} line {number}"
        if not _is_key_type(tokens[0]):
            if any(_is_key_type(t) for t in tokens[1:]):
                raise AdminConfigError(
                    f"{where}: key options ({tokens[0][:40]}...) are not supported; "
                    "remove everything before the key type"
                )
            raise AdminConfigError(f"{where}: not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA...')")
        try:
            key = keys.Key.fromString(b" ".join(line.split()[:2]))
        except (keys.BadKeyError, ValueError, IndexError) as e:
            raise AdminConfigError(f"{where}: cannot parse the {tokens[0]} key ({e})") from None
        if not key.isPublic():  # pragma: no cover - fromString of one line never yields a private key
            raise AdminConfigError(f"{where}: expected a public key")
        out.append(key)
    if not out:
        raise AdminConfigError(
            f"admin.manhole.authorized_keys: {path} holds no key; add a public key "
            "(e.g. the contents of admin_key.pub)"
        )
    return out
