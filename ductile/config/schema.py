"""
Which keys a config file may hold, for the unknown-key warnings.

Go ductile decodes leniently and re-decodes each file strictly to warn about
keys it ignored (contract §5.6); this does the same walk over each parsed
file.  Keys of Go features this project does not implement are known: they
are accepted with a warning saying so, never refused, even when strict.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Union

import attrs


@attrs.frozen
class ListOf:
    item: "Node"


@attrs.frozen
class MapOf:
    """A mapping with free keys (e.g. plugin names), each value a C{value}."""

    value: "Node"


@attrs.frozen
class Unimplemented:
    """A Go feature ductile accepts and ignores."""

    what: str


ANY = object()  # any value; not descended into
Node = Union[Mapping[str, Any], ListOf, MapOf, Unimplemented, object]

NOT_IMPLEMENTED = "accepted but not implemented by ductile; ignored"

_SCHEDULE: Mapping[str, Node] = {
    "id": ANY,
    "every": ANY,
    "jitter": ANY,
    "command": ANY,
    "payload": ANY,
    "if_running": ANY,
    # Checked by the schedule builder (ductile/config/sections.py).
    "cron": ANY,
    "at": ANY,
    "after": ANY,
    "catch_up": ANY,
    "only_between": ANY,
    "timezone": ANY,
    "not_on": ANY,
}

_PLUGIN: Mapping[str, Node] = {
    "enabled": ANY,
    "config": ANY,
    "retry": {"max_attempts": ANY, "backoff_base": ANY},
    "timeouts": MapOf(ANY),
    "parallelism": ANY,
    "schedules": ListOf(_SCHEDULE),
    "schedule": ANY,  # refused by the builder with a pointer to schedules
    "uses": Unimplemented("plugin aliases"),
    "run_as": Unimplemented("run_as"),
    "requires_vault": Unimplemented("requires_vault"),
    "circuit_breaker": Unimplemented("circuit_breaker"),
    "max_outstanding_polls": Unimplemented("max_outstanding_polls"),
    "notify_on_complete": ANY,
}

_KEY_REF: Mapping[str, Node] = {"key_id": ANY, "secret_ref": ANY}

SCHEMA: Mapping[str, Node] = {
    "include": ANY,
    "environment_vars": {"include": ANY},
    "service": {
        "name": ANY,
        "tick_interval": ANY,
        "log_level": ANY,
        "log_format": ANY,
        "dedupe_ttl": ANY,
        "max_workers": ANY,
        "job_log_retention": ANY,
        "job_queue_retention": ANY,
        "strict": ANY,
        "allow_symlinks": ANY,
        "strict_mode": ANY,
        "job_transitions_retention": Unimplemented("job_transitions_retention"),
        "job_attempts_retention": Unimplemented("job_attempts_retention"),
        "breaker_transitions_retention": Unimplemented("breaker_transitions_retention"),
        "plugin_env_passthrough": ANY,
        "admission": {
            "validate_config_on_boot": ANY,
            "verify_integrity_on_boot": Unimplemented("verify_integrity_on_boot"),
            "fail_on_drift": Unimplemented("fail_on_drift"),
            "require_api_auth": Unimplemented("require_api_auth"),
        },
        "hook_max_depth": ANY,
        "unconfined": Unimplemented("unconfined"),
    },
    "state": {"path": ANY, "synchronous": ANY},
    "database": {"path": ANY},
    "secrets": Unimplemented("the secrets vault"),
    "vault": Unimplemented("the secrets vault"),
    "api": {
        "enabled": ANY,
        "listen": ANY,
        "auth": {"tokens": ListOf({"token": ANY, "scopes": ANY})},
        "max_body_size": ANY,
        "read_timeout": ANY,
        "max_connections": ANY,
        "max_concurrent_sync": Unimplemented("max_concurrent_sync"),
        "max_sync_timeout": Unimplemented("max_sync_timeout"),
        "allowed_origins": Unimplemented("CORS"),
    },
    "plugin_roots": ANY,
    "plugins": MapOf(_PLUGIN),
    "accounts": Unimplemented("accounts (privilege separation)"),
    "tokens": ListOf(
        {
            "name": ANY,
            "key": ANY,
            "scopes_file": ANY,
            "scopes_hash": ANY,
            "created_at": ANY,
            "description": ANY,
        }
    ),
    "instances": ListOf(
        {
            "name": ANY,
            "enabled": ANY,
            "base_url": ANY,
            "ingress_path": ANY,
            "secret_ref": ANY,
            "key_id": ANY,
            "timeout": ANY,
            "allow": ANY,
            "retry": {"max_attempts": ANY, "backoff_base": ANY, "max_backoff": ANY},
        }
    ),
    "remote_ingress": {
        "listen_path": ANY,
        "max_body_size": ANY,
        "allowed_clock_skew": ANY,
        "require_key_id": ANY,
        "peers": ListOf(
            {
                "name": ANY,
                "enabled": ANY,
                "secret_ref": ANY,
                "key_id": ANY,
                "keys": ListOf(_KEY_REF),
                "accept": ANY,
                "baggage": {"allow": ANY},
                "allow_sync": Unimplemented("sync relay replies (allow_sync)"),
            }
        ),
    },
    "admin": {
        "manhole": {
            "listen": ANY,
            "host_key": ANY,
            "authorized_keys": ANY,
            "allow_remote": ANY,
        }
    },
    "metrics": {"listen": ANY},
    # The pipeline compiler checks inside pipelines.
    "pipelines": ANY,
    "routes": Unimplemented("routes"),
    "webhooks": Unimplemented("webhooks"),
    "tcc_paths": Unimplemented("tcc_paths (macOS only)"),
}


def check_keys(data: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """
    Walk one file's data against L{SCHEMA}.

    @return: C{(unknown, unimplemented)}, each a list of
        C{(key path, message)}.
    """
    unknown: list[tuple[str, str]] = []
    unimplemented: list[tuple[str, str]] = []
    _walk(data, SCHEMA, "", unknown, unimplemented)
    return unknown, unimplemented


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _walk(value: Any, node: Node, path: str, unknown: list, unimplemented: list) -> None:
    if node is ANY:
        return
    if isinstance(node, Unimplemented):
        last = path.rsplit(".", 1)[-1]
        detail = "" if node.what in (last, path) else f" ({node.what})"
        unimplemented.append((path, f"{NOT_IMPLEMENTED}{detail}"))
        return
    if isinstance(node, ListOf):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(item, node.item, f"{path}[{i}]", unknown, unimplemented)
        return
    if isinstance(node, MapOf):
        if isinstance(value, dict):
            for key, item in value.items():
                _walk(item, node.value, _join(path, str(key)), unknown, unimplemented)
        return
    if not isinstance(value, dict):
        return  # a type error, reported by the builder
    assert isinstance(node, Mapping)
    for key, item in value.items():
        if key in node:
            _walk(item, node[key], _join(path, str(key)), unknown, unimplemented)
        else:
            hint = difflib.get_close_matches(str(key), list(node), n=1)
            message = "unknown key"
            if hint:
                message += f" (did you mean {hint[0]}?)"
            unknown.append((_join(path, str(key)), message))
