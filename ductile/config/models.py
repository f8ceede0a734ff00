"""
The loaded configuration, as frozen values.

The loader (L{ductile.config.loader}) builds these from the YAML files; the
rest of ductile only ever sees these classes.  Durations are float seconds,
byte sizes are ints, paths are absolute.  Secrets are resolved at load time
and kept out of C{repr} so a logged config never shows one.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import attrs

DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "poll": 60.0,
    "handle": 120.0,
    "health": 10.0,
    "init": 30.0,
}
OTHER_COMMAND_TIMEOUT = 60.0


def default_max_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


@attrs.frozen
class RetryPolicy:
    """Job retry policy (contract §4.3)."""

    max_attempts: int = 4
    backoff_base: float = 30.0


@attrs.frozen
class Schedule:
    """
    One C{plugins.<n>.schedules[]} entry.  Exactly one trigger is set:
    C{cron} (text), C{at} (epoch seconds) or C{after} (seconds after start);
    when none is, C{every} (seconds) applies.
    """

    id: str = "default"
    every: float = 3600.0
    jitter: float = 0.0
    command: str = "poll"
    payload: Mapping[str, Any] = attrs.field(factory=dict)
    if_running: str = "skip"  # skip | queue
    cron: str | None = None
    at: float | None = None
    after: float | None = None
    #: IANA zone name for C{cron} and the windows; "" is Go's default
    #: (local time for cron, UTC for only_between/not_on).
    timezone: str = ""
    #: C{only_between} as (start, end) minutes of the day; end < start wraps midnight.
    only_between: tuple[int, int] | None = None
    #: C{not_on} weekdays, 0 = Sunday.
    not_on: frozenset[int] = frozenset()
    #: skip | run_once | run_all: what an C{every} schedule does at start
    #: about runs missed while the instance was down.
    catch_up: str = "skip"

    @property
    def trigger(self) -> str:
        """C{every}, C{cron}, C{at} or C{after}."""
        if self.cron is not None:
            return "cron"
        if self.at is not None:
            return "at"
        if self.after is not None:
            return "after"
        return "every"


@attrs.frozen
class PluginConfig:
    """Operator settings for one plugin (C{plugins.<name>})."""

    name: str
    enabled: bool = True
    config: Mapping[str, Any] = attrs.field(factory=dict)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    timeouts: Mapping[str, float] = attrs.field(factory=dict)
    #: As written by the operator; C{None} when unset (see contract §2.8).
    parallelism: int | None = None
    schedules: tuple[Schedule, ...] = ()
    #: Fire C{on-hook} pipelines when a root job of this plugin ends (§3.4).
    notify_on_complete: bool = False

    def timeout_for(self, command: str) -> float:
        if command in self.timeouts:
            return self.timeouts[command]
        return DEFAULT_TIMEOUTS.get(command, OTHER_COMMAND_TIMEOUT)


@attrs.frozen
class ServiceConfig:
    name: str = "ductile"
    tick_interval: float = 60.0
    log_level: str = "info"
    log_format: str = "json"
    dedupe_ttl: float = 86400.0
    max_workers: int = attrs.field(factory=default_max_workers)
    job_log_retention: float = 720 * 3600.0
    job_queue_retention: float = 24 * 3600.0
    strict: bool = False
    allow_symlinks: bool = False
    #: How many hook jobs deep a chain of lifecycle hooks may go (§3.4).
    hook_max_depth: int = 4
    #: Names of the daemon's environment variables plugins also get, on top
    #: of the fixed minimal environment (Go's C{plugin_env_passthrough}).
    plugin_env_passthrough: tuple[str, ...] = ()


@attrs.frozen
class ApiToken:
    """A bearer token with its scopes (C{api.auth.tokens[]} or a tokens.yaml entry)."""

    token: str = attrs.field(repr=False)
    scopes: tuple[str, ...] = ()
    #: Where it came from, for messages: C{api.auth.tokens[0]} or the token name.
    label: str = ""


@attrs.frozen
class ApiConfig:
    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    tokens: tuple[ApiToken, ...] = ()
    max_body_size: int = 1024 * 1024
    #: Seconds a client has to send one whole request (headers and body).
    read_timeout: float = 10.0
    #: Connections served at once; more are refused (memory stays bounded).
    max_connections: int = 1024


@attrs.frozen
class StateConfig:
    path: str = "./data/state.db"
    synchronous: str = "full"  # full | normal


@attrs.frozen
class Token:
    """A C{tokens.yaml} entry: a named shared secret, with optional API scopes."""

    name: str
    key: str = attrs.field(repr=False)
    scopes_file: str | None = None
    scopes_hash: str | None = None
    scopes: tuple[str, ...] = ()
    source_file: str = ""


@attrs.frozen
class RelayRetry:
    """Sender-side delivery retries (an extension: Go never retries)."""

    max_attempts: int = 10
    backoff_base: float = 30.0
    max_backoff: float = 3600.0


@attrs.frozen
class Instance:
    """A relay destination (C{instances[]})."""

    name: str
    base_url: str
    ingress_path: str
    secret_ref: str
    secret: str = attrs.field(repr=False, default="")
    enabled: bool = True
    key_id: str = ""
    timeout: float = 10.0
    allow: tuple[str, ...] = ()
    retry: RelayRetry = attrs.field(factory=RelayRetry)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.ingress_path


@attrs.frozen
class PeerKey:
    """One key a peer may sign with; C{key_id} empty means "any key id"."""

    secret_ref: str
    secret: str = attrs.field(repr=False, default="")
    key_id: str = ""


@attrs.frozen
class Peer:
    """A relay sender this instance accepts (C{remote_ingress.peers[]})."""

    name: str
    keys: tuple[PeerKey, ...]
    enabled: bool = True
    accept: tuple[str, ...] = ()
    baggage_allow: tuple[str, ...] = ()


@attrs.frozen
class RemoteIngress:
    listen_path: str = "/ingest/peer"
    max_body_size: int = 1024 * 1024
    allowed_clock_skew: float = 300.0
    require_key_id: bool = False
    peers: tuple[Peer, ...] = ()

    def enabled_peer(self, name: str) -> Peer | None:
        for peer in self.peers:
            if peer.enabled and peer.name == name:
                return peer
        return None


@attrs.frozen
class ManholeConfig:
    listen: str
    host_key: str
    authorized_keys: str
    allow_remote: bool = False


@attrs.frozen
class MetricsConfig:
    """A separate, unauthenticated listener for C{/metrics} (for a scraper)."""

    listen: str


@attrs.frozen
class PipelineSource:
    """A raw C{pipelines[]} entry and where it was written, for compile errors."""

    spec: Mapping[str, Any]
    file: str
    index: int


@attrs.frozen
class Config:
    config_file: str
    config_dir: str
    service: ServiceConfig = attrs.field(factory=ServiceConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    state: StateConfig = attrs.field(factory=StateConfig)
    plugin_roots: tuple[str, ...] = ()
    plugins: Mapping[str, PluginConfig] = attrs.field(factory=dict)
    tokens: tuple[Token, ...] = ()
    instances: tuple[Instance, ...] = ()
    remote_ingress: RemoteIngress | None = None
    pipelines: tuple[PipelineSource, ...] = ()
    manhole: ManholeConfig | None = None
    metrics: MetricsConfig | None = None
    warnings: tuple[str, ...] = ()
    #: Every file read, in merge order (the root first).
    source_files: tuple[str, ...] = ()

    def plugin_config(self, name: str) -> PluginConfig:
        return self.plugins.get(name) or PluginConfig(name=name)

    def enabled_instance(self, name: str) -> Instance | None:
        for inst in self.instances:
            if inst.enabled and inst.name == name.strip():
                return inst
        return None
