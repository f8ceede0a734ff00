"""
The manhole admin shell: an SSH server (public keys only) giving the
operator a Python REPL on the running instance's live objects.  Off unless
C{admin.manhole} is configured.  See C{docs/manhole.md}.
"""
from __future__ import annotations

from ductile.admin.errors import AdminConfigError
from ductile.admin.keyfiles import load_authorized_keys, load_host_key
from ductile.admin.listen import is_loopback, manhole_endpoint
from ductile.admin.namespace import HELP_TEXT, Helpers, admin_namespace
from ductile.admin.shell import (
    ADMIN_USER,
    AdminFactory,
    ManholeService,
    build_manhole_factory,
    build_manhole_service,
    check_manhole,
)

__all__ = [
    "ADMIN_USER",
    "AdminConfigError",
    "AdminFactory",
    "HELP_TEXT",
    "Helpers",
    "ManholeService",
    "admin_namespace",
    "build_manhole_factory",
    "build_manhole_service",
    "check_manhole",
    "is_loopback",
    "load_authorized_keys",
    "load_host_key",
    "manhole_endpoint",
]
