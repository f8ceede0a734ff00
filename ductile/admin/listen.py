"""
Where the manhole listens, and the refusal to listen anywhere reachable
from the network unless the operator said so (C{allow_remote: true}).

Only C{tcp:}, C{tcp6:} and C{unix:} endpoint strings are accepted (plus the
Go-style C{host:port} form), because those are the ones whose exposure we
can judge.  A unix socket is always created owner-only: C{mode=600} is added
when the string has no mode, and a mode granting group or other access is
refused.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from ductile.admin.errors import AdminConfigError

# Positional parameter names, as Twisted's own parsers take them.
_POSITIONAL = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}
_ALL_INTERFACES = {"tcp": "", "tcp6": "::"}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _split(description: str) -> list[tuple[str, ...]]:
    """
    Split an endpoint string the way C{twisted.internet.endpoints} does:
    C{:} separates parameters, the first unescaped C{=} makes a keyword,
    a backslash escapes the next character.
    """
    parts: list[tuple[str, ...]] = []
    current = ""
    sofar: tuple[str, ...] = ()
    in_value = False
    chars = iter(description)
    for ch in chars:
        if ch == ":":
            parts.append(sofar + (current,))
            sofar, current, in_value = (), "", False
        elif ch == "=" and not in_value:
            sofar += (current,)
            current, in_value = "", True
        elif ch == "\\":
            current += next(chars, "")
        else:
            current += ch
    parts.append(sofar + (current,))
    return parts


def _parameters(kind: str, parts: list[tuple[str, ...]]) -> dict[str, str]:
    names = _POSITIONAL[kind]
    params: dict[str, str] = {}
    positional = [p[0] for p in parts if len(p) == 1]
    if len(positional) > len(names):
        raise AdminConfigError(
            f"admin.manhole.listen: too many parameters for a {kind}: endpoint "
            f"(expected at most {', '.join(names)})"
        )
    params.update(zip(names, positional))
    for p in parts:
        if len(p) == 2:
            params[p[0]] = p[1]
    return params


from ductile.endpoints import go_style_to_endpoint  # noqa: E402  (shared with api.listen)


def is_loopback(host: str) -> bool:
    """C{127.0.0.0/8}, C{::1} or a conventional name for them."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def manhole_endpoint(listen: str, allow_remote: bool) -> str:
    """
    The Twisted endpoint string to serve the manhole on, or
    L{AdminConfigError} if it would be reachable from the network without
    C{allow_remote} or could expose a unix socket to other users.
    """
    if not listen or not listen.strip():
        raise AdminConfigError("admin.manhole.listen is empty; use e.g. tcp:2222:interface=127.0.0.1")
    description = go_style_to_endpoint(listen.strip())
    parts = _split(description)
    kind = parts[0][0] if len(parts[0]) == 1 else ""
    if kind not in _POSITIONAL:
        raise AdminConfigError(
            f"admin.manhole.listen {listen!r}: only tcp:, tcp6:, unix: endpoints or host:port are supported "
            "(e.g. tcp:2222:interface=127.0.0.1 or unix:/run/ductile/admin.sock)"
        )
    params = _parameters(kind, parts[1:])
    if kind == "unix":
        return _unix(listen, description, params)
    return _tcp(listen, kind, description, params, allow_remote)


def _tcp(listen: str, kind: str, description: str, params: dict[str, Any], allow_remote: bool) -> str:
    port = params.get("port", "")
    if not port.isdigit() or int(port) > 65535:
        raise AdminConfigError(f"admin.manhole.listen {listen!r}: port {port!r} is not a TCP port number")
    interface = params.get("interface", _ALL_INTERFACES[kind])
    if not is_loopback(interface) and not allow_remote:
        where = f"interface {interface}" if interface not in ("", "::", "0.0.0.0") else "all interfaces"
        raise AdminConfigError(
            f"admin.manhole.listen {listen!r} would listen on {where}, reachable from the network; "
            "use a loopback interface (tcp:PORT:interface=127.0.0.1) or a unix socket, "
            "or set admin.manhole.allow_remote: true to accept this"
        )
    return description


def _unix(listen: str, description: str, params: dict[str, str]) -> str:
    if not params.get("address"):
        raise AdminConfigError(f"admin.manhole.listen {listen!r}: the unix socket path is missing")
    if "mode" not in params:
        return description + ":mode=600"
    try:
        mode = int(params["mode"], 8)
    except ValueError:
        raise AdminConfigError(
            f"admin.manhole.listen {listen!r}: mode {params['mode']!r} is not an octal file mode"
        ) from None
    if mode & 0o077:
        raise AdminConfigError(
            f"admin.manhole.listen {listen!r}: mode={params['mode']} lets other users reach the admin socket; "
            "use mode=600 (or leave mode out, 600 is the default here)"
        )
    return description
