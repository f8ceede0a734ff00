"""
Listen addresses as operators write them, turned into Twisted endpoint strings.
"""
from __future__ import annotations

import re

_HOST_PORT = re.compile(r"^(?P<host>\[[^\]]+\]|[^:]*):(?P<port>\d+)$")
# An endpoint type followed by a port number looks like host:port; it is not.
_ENDPOINT_TYPES = {"tcp", "tcp6", "unix", "ssl", "tls", "systemd", "stdio", "onion", "tor"}


def go_style_to_endpoint(listen: str) -> str:
    """
    Go-style C{host:port} (C{127.0.0.1:2222}, C{:2222}, C{[::1]:2222},
    C{localhost:2222}) as a Twisted C{tcp:} endpoint string; an endpoint
    string (C{tcp:2222}, C{unix:...}) as is.
    """
    m = _HOST_PORT.match(listen)
    if m is None or m.group("host").lower() in _ENDPOINT_TYPES:
        return listen
    host = m.group("host").strip("[]")
    desc = f"tcp:{m.group('port')}"
    if host:
        desc += ":interface=" + host.replace(":", r"\:")
    return desc
