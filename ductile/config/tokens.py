"""
C{tokens:} entries (C{tokens.yaml}): named shared secrets, optionally with
API scopes read from a scopes file whose BLAKE3 hash is pinned.

C{scopes_file} is relative to the file that declares the token;
C{scopes_hash} is C{blake3:} plus the lowercase hex BLAKE3-256 of the scopes
file's raw bytes (contract §5.7).  Compute it with::

    python3 -c "import blake3,sys;print('blake3:'+blake3.blake3(open(sys.argv[1],'rb').read()).hexdigest())" scopes/relay-admin.json
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import blake3

from ductile.config.fields import At
from ductile.config.merge import Located
from ductile.config.models import Token
from ductile.config.report import Report, show_value
from ductile.config.yamlsafe import scalar_text

SCOPES_HASH = re.compile(r"^blake3:[0-9a-f]{64}$")
HASH_HINT = (
    "compute it with: python3 -c \"import blake3,sys;"
    "print('blake3:'+blake3.blake3(open(sys.argv[1],'rb').read()).hexdigest())\" SCOPES_FILE"
)


def scopes_hash_of(data: bytes) -> str:
    """The C{scopes_hash} value for a scopes file's raw bytes."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def build_tokens(items: list[Located], report: Report) -> tuple[tuple[Token, ...], dict[str, str]]:
    """
    Build the tokens and check their scopes files.

    @return: the tokens, and for each token name the C{file: key} location
        of its C{key}, for messages about its use.
    """
    tokens: list[Token] = []
    where: dict[str, str] = {}
    seen: dict[str, str] = {}
    for item in items:
        prefix = f"tokens[{item.index}]"
        if not isinstance(item.value, dict):
            report.invalid(item.file, prefix, item.value, "expected a mapping with name and key")
            continue
        at = At.in_file(item.value, prefix, item.file, report)
        name = at.text("name", required=True)
        raw_key = at.raw("key")
        if raw_key is None:
            key = ""
        elif isinstance(raw_key, (dict, list)):
            at.error("key", "expected a string (the secret value or ${VAR})")
            key = ""
        else:
            key = scalar_text(raw_key)
        if not name:
            continue
        if name in seen:
            at.error("name", f'duplicate token name "{name}" (first defined at {seen[name]})')
            continue
        seen[name] = f"{report.display(item.file)}: {prefix}"
        where[name] = f"{report.display(item.file)}: {prefix}.key"
        scopes_file, scopes_hash, scopes = _scopes(at, name, item.file, report)
        tokens.append(
            Token(
                name=name,
                key=key,
                scopes_file=scopes_file,
                scopes_hash=scopes_hash,
                scopes=scopes,
                source_file=item.file,
            )
        )
    return tuple(tokens), where


def _scopes(
    at: At, name: str, declaring_file: str, report: Report
) -> tuple[str | None, str | None, tuple[str, ...]]:
    rel = at.text("scopes_file") or None
    pinned = at.text("scopes_hash") or None
    if rel is None and pinned is None:
        return None, None, ()
    if rel is None:
        at.error("scopes_hash", f'token "{name}": scopes_hash is set but scopes_file is missing')
        return None, pinned, ()
    path = os.path.normpath(os.path.join(os.path.dirname(declaring_file), os.path.expanduser(rel)))
    if pinned is None:
        at.error(
            "scopes_file",
            f'token "{name}": scopes file {path} has no scopes_hash to verify it; {HASH_HINT}',
        )
        return path, None, ()
    if not SCOPES_HASH.match(pinned):
        at.error(
            "scopes_hash",
            f'token "{name}": malformed scopes_hash {show_value(pinned, 90)} for scopes file {path};'
            f" expected blake3: followed by 64 lowercase hex digits; {HASH_HINT}",
        )
        return path, pinned, ()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        at.error(
            "scopes_file",
            f'token "{name}": scopes file {path} cannot be read ({e.strerror or e});'
            f" scopes_hash {pinned} cannot be verified",
        )
        return path, pinned, ()
    actual = scopes_hash_of(data)
    if actual != pinned:
        at.error(
            "scopes_hash",
            f'token "{name}": scopes file {path} does not match its scopes_hash:'
            f" expected {pinned}, file has {actual}; if the change is intended, {HASH_HINT}",
        )
        return path, pinned, ()
    return path, pinned, _parse_scopes(at, name, path, data)


def _parse_scopes(at: At, name: str, path: str, data: bytes) -> tuple[str, ...]:
    expected = 'expected JSON {"scopes": ["scope", ...]}'
    try:
        obj: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        at.error("scopes_file", f'token "{name}": scopes file {path} is not valid JSON ({e}); {expected}')
        return ()
    scopes = obj.get("scopes") if isinstance(obj, dict) else None
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s.strip() for s in scopes):
        at.error("scopes_file", f'token "{name}": scopes file {path}: {expected}')
        return ()
    return tuple(s.strip() for s in scopes)
