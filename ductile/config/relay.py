"""
The relay sections: C{instances} (sender side) and C{remote_ingress}
(receiver side), with their secrets resolved from the tokens.

Only enabled instances and peers are checked; disabled ones are kept (so
tools can list them) but ignored entirely, as Go ductile does.
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit

from ductile.config.fields import At
from ductile.config.interpolate import unresolved_vars
from ductile.config.merge import Located
from ductile.config.models import (
    Instance,
    Peer,
    PeerKey,
    RelayRetry,
    RemoteIngress,
    Token,
)
from ductile.config.report import Report, Silent
from ductile.events import INSTANCE_NAME, RELAY_EVENT_TYPE

DEFAULT_LISTEN_PATH = "/ingest/peer"
DEFAULT_RELAY_TIMEOUT = 10.0
DEFAULT_CLOCK_SKEW = 300.0
DEFAULT_BODY = 1024 * 1024


def normalise_listen_path(path: str) -> str:
    """Contract §1.1: trim; empty means the default; C{/} stays; else drop trailing C{/}."""
    path = path.strip()
    if not path:
        return DEFAULT_LISTEN_PATH
    if path == "/":
        return path
    return path.rstrip("/") or "/"


class SecretResolver:
    """Looks up C{secret_ref} among the tokens and checks the value is usable."""

    def __init__(self, tokens: tuple[Token, ...], where: Mapping[str, str]) -> None:
        self._tokens = {t.name: t for t in tokens}
        self._where = where

    def resolve(self, at: At, field: str, ref: str, who: str) -> str:
        """
        The secret for C{ref}, or C{""} after reporting why it is unusable.
        C{who} reads like C{relay instance "lab"}.
        """
        token = self._tokens.get(ref)
        if token is None:
            at.error(field, f'{who}: secret_ref "{ref}" not found in tokens')
            return ""
        missing = unresolved_vars(token.key)
        if missing:
            names = ", ".join("${%s}" % m for m in missing)
            at.error(
                field,
                f'{who}: secret_ref "{ref}" resolves to token key {self._where[ref]},'
                f" which uses the unset environment variable {names}",
            )
            return ""
        if not token.key.strip():
            at.error(field, f'{who}: secret_ref "{ref}" resolves to an empty key ({self._where[ref]})')
            return ""
        return token.key


def _check_name(at: At, name: str, what: str) -> None:
    if name and not INSTANCE_NAME.match(name):
        at.warn("name", f'{what} name "{name}" should be lower-case hyphenated, e.g. home-primary')


def _event_types(at: At, field: str) -> tuple[str, ...]:
    types = at.str_list(field)
    for i, t in enumerate(types):
        if not RELAY_EVENT_TYPE.match(t):
            at.report.invalid(
                at.file(field),
                f"{at.key(field)}[{i}]",
                t,
                "expected a relay event type: lower-case dotted or hyphenated, e.g. backup.ready",
            )
    return types


def _enabled(item: Located, report: Report) -> bool:
    at = At.in_file(item.value, "", item.file, report)
    return at.flag("enabled", True) if isinstance(item.value, dict) else True


def build_instances(
    items: list[Located], service_name: str, secrets: SecretResolver, report: Report
) -> tuple[Instance, ...]:
    out: list[Instance] = []
    seen: dict[str, str] = {}
    for item in items:
        prefix = f"instances[{item.index}]"
        if not isinstance(item.value, dict):
            report.invalid(item.file, prefix, item.value, "expected a mapping with name, base_url, ...")
            continue
        enabled = _enabled(item, report)
        at = At.in_file(item.value, prefix, item.file, report if enabled else Silent(report.config_dir))
        inst = _instance(at, enabled, service_name, secrets)
        if inst is None:
            continue
        if enabled:
            if inst.name in seen:
                at.error("name", f'duplicate instance name "{inst.name}" (first defined at {seen[inst.name]})')
                continue
            seen[inst.name] = f"{report.display(item.file)}: {prefix}"
        out.append(inst)
    return tuple(out)


def _instance(at: At, enabled: bool, service_name: str, secrets: SecretResolver) -> Instance | None:
    name = at.text("name", required=True)
    if not name:
        return None
    _check_name(at, name, "instance")
    who = f'relay instance "{name}"'
    base_url = at.text("base_url", required=True)
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            at.invalid("base_url", base_url, "expected an absolute http:// or https:// URL")
    ingress_path = at.text("ingress_path", required=True)
    if ingress_path:
        if not ingress_path.startswith("/"):
            at.invalid("ingress_path", ingress_path, "expected a path starting with /, e.g. /ingest/peer/" + service_name)
        elif not ingress_path.endswith("/" + service_name):
            at.warn(
                "ingress_path",
                f'"{ingress_path}" does not end in "/{service_name}" (this instance\'s service.name);'
                " the receiver identifies the sender by that last path segment",
            )
    ref = at.text("secret_ref")
    secret = ""
    if not ref:
        at.error("secret_ref", f"{who}: secret_ref is required (the name of a tokens entry)")
    else:
        secret = secrets.resolve(at, "secret_ref", ref, who)
    timeout = at.duration("timeout", DEFAULT_RELAY_TIMEOUT, any_sign=True)
    if timeout <= 0:  # Go: a zero or negative timeout means the default
        timeout = DEFAULT_RELAY_TIMEOUT
    retry_at = at.sub("retry")
    defaults = RelayRetry()
    retry = RelayRetry(
        max_attempts=retry_at.whole("max_attempts", defaults.max_attempts, minimum=1),
        backoff_base=retry_at.duration("backoff_base", defaults.backoff_base, positive=True),
        max_backoff=retry_at.duration("max_backoff", defaults.max_backoff, positive=True),
    )
    return Instance(
        name=name,
        base_url=base_url,
        ingress_path=ingress_path,
        secret_ref=ref,
        secret=secret,
        enabled=enabled,
        key_id=at.text("key_id"),
        timeout=timeout,
        allow=_event_types(at, "allow"),
        retry=retry,
    )


def build_remote_ingress(
    section: At | None, items: list[Located], secrets: SecretResolver, report: Report
) -> RemoteIngress | None:
    if section is None:
        return None
    listen_path = normalise_listen_path(section.text("listen_path", DEFAULT_LISTEN_PATH))
    if not listen_path.startswith("/"):
        section.invalid("listen_path", listen_path, "expected a path starting with /, e.g. /ingest/peer")
        listen_path = DEFAULT_LISTEN_PATH
    skew = section.duration("allowed_clock_skew", DEFAULT_CLOCK_SKEW, any_sign=True)
    if skew <= 0:  # Go: a zero or negative skew means the default
        skew = DEFAULT_CLOCK_SKEW
    peers: list[Peer] = []
    seen: dict[str, str] = {}
    for item in items:
        prefix = f"remote_ingress.peers[{item.index}]"
        if not isinstance(item.value, dict):
            report.invalid(item.file, prefix, item.value, "expected a mapping with name, secret_ref, ...")
            continue
        enabled = _enabled(item, report)
        at = At.in_file(item.value, prefix, item.file, report if enabled else Silent(report.config_dir))
        peer = _peer(at, enabled, secrets)
        if peer is None:
            continue
        if enabled:
            if peer.name in seen:
                at.error("name", f'duplicate peer name "{peer.name}" (first defined at {seen[peer.name]})')
                continue
            seen[peer.name] = f"{report.display(item.file)}: {prefix}"
        peers.append(peer)
    return RemoteIngress(
        listen_path=listen_path,
        max_body_size=section.size("max_body_size", DEFAULT_BODY),
        allowed_clock_skew=skew,
        require_key_id=section.flag("require_key_id", False),
        peers=tuple(peers),
    )


def _peer(at: At, enabled: bool, secrets: SecretResolver) -> Peer | None:
    name = at.text("name", required=True)
    if not name:
        return None
    if "/" in name:
        at.invalid("name", name, "expected one URL path segment (the sender's service.name), without /")
    _check_name(at, name, "peer")
    who = f'relay peer "{name}"'
    keys: list[PeerKey] = []
    raw_keys: Any = at.raw("keys")
    if raw_keys is not None and (at.has("secret_ref") or at.has("key_id")):
        at.error("keys", f"{who}: give either secret_ref/key_id or keys, not both")
    elif raw_keys is not None:
        if not isinstance(raw_keys, list) or not raw_keys:
            at.invalid("keys", raw_keys, "expected a non-empty list of {key_id, secret_ref}")
        else:
            seen_ids: set[str] = set()
            for i, entry in enumerate(raw_keys):
                kat = At.in_file(entry, f"{at.key('keys')}[{i}]", at.file("keys"), at.report)
                if not isinstance(entry, dict):
                    kat.report.invalid(at.file("keys"), kat.prefix, entry, "expected a mapping with key_id and secret_ref")
                    continue
                key_id = kat.text("key_id")
                if key_id in seen_ids:
                    kat.error("key_id", f'{who}: duplicate key_id "{key_id}"')
                    continue
                seen_ids.add(key_id)
                ref = kat.text("secret_ref")
                if not ref:
                    kat.error("secret_ref", f"{who}: secret_ref is required (the name of a tokens entry)")
                    continue
                keys.append(PeerKey(secret_ref=ref, secret=secrets.resolve(kat, "secret_ref", ref, who), key_id=key_id))
    else:
        ref = at.text("secret_ref")
        if not ref:
            at.error("secret_ref", f"{who}: secret_ref is required (the name of a tokens entry)")
        else:
            keys.append(PeerKey(secret_ref=ref, secret=secrets.resolve(at, "secret_ref", ref, who), key_id=at.text("key_id")))
    baggage = at.sub("baggage")
    return Peer(
        name=name,
        keys=tuple(keys),
        enabled=enabled,
        accept=_event_types(at, "accept"),
        baggage_allow=baggage.str_list("allow"),
    )
