"""
Load a ductile config directory into a L{Config}.

Compatible with Go ductile's files (contract §5): C{include} graphs, C{.env}
files, C{${VAR}} interpolation, append/replace merge rules, Go durations,
tokens with pinned scopes files, and the relay sections.  Every problem
found is reported at once in one L{ConfigError}; warnings travel on
C{Config.warnings}.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from ductile.config.errors import ConfigError
from ductile.config.fields import At
from ductile.config.merge import Located, merge_sources
from ductile.config.models import Config
from ductile.config.relay import SecretResolver, build_instances, build_remote_ingress
from ductile.config.report import Report
from ductile.config.schema import check_keys
from ductile.config.sections import (
    build_api,
    build_manhole,
    build_metrics,
    build_pipelines,
    build_plugin_roots,
    build_plugins,
    build_service,
    build_state,
    strict_requested,
)
from ductile.config.sources import EnvLookup, read_sources
from ductile.config.tokens import build_tokens

CONFIG_FILE = "config.yaml"


def locate_config(path: str | None, environ: Mapping[str, str]) -> str:
    """
    The config file to load: C{path} (a file, or a directory holding
    C{config.yaml}); else C{$DUCTILE_CONFIG_DIR}; else C{~/.config/ductile};
    else C{/etc/ductile}.

    @raise ConfigError: when none is found.
    """
    home = _home(environ)
    if not path:
        path = environ.get("DUCTILE_CONFIG_DIR", "").strip() or None
    if path:
        if path == "~" or path.startswith("~/"):
            path = home + path[1:]
        if os.path.isdir(path) or not path.endswith((".yaml", ".yml")):
            return os.path.join(path, CONFIG_FILE)
        return path
    candidates = [os.path.join(home, ".config", "ductile", CONFIG_FILE), os.path.join("/etc/ductile", CONFIG_FILE)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(
        "no config found: give --config PATH, or set $DUCTILE_CONFIG_DIR, or create "
        + " or ".join(candidates)
    )


def _home(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or os.path.expanduser("~")


def load_config(
    path: str | None = None,
    *,
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """
    Load and validate the configuration.

    @param path: a config file, or a directory holding C{config.yaml};
        C{None} searches the default places (L{locate_config}).
    @param strict: make unknown keys errors (as C{service.strict: true}).
    @param environ: the process environment for C{${VAR}}; defaults to
        C{os.environ}, which is never modified.
    @raise ConfigError: listing every problem found.
    """
    if environ is None:
        environ = os.environ
    config_file = os.path.abspath(locate_config(path, environ))
    config_dir = os.path.dirname(config_file)
    home = _home(environ)
    report = Report(config_dir=config_dir)

    sources = read_sources(config_file, EnvLookup(environ), report)
    if not sources:
        raise ConfigError(report.errors, report.warnings)
    merged = merge_sources(sources, report)
    tree = merged.tree

    def section(name: str) -> At:
        at = At(tree, "", (), merged.file_of, report)
        return at.sub(name)

    def located(*path: str) -> list[Located]:
        node: Any = tree
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, list) else []

    service_at = section("service")
    service = build_service(service_at)
    strict = strict or strict_requested(service_at)

    # Unknown keys, per file (as Go's strict re-decode does).
    for source in sources:
        unknown, unimplemented = check_keys(source.data)
        for key, message in unknown:
            (report.error if strict else report.warn)(source.path, key, message)
        for key, message in unimplemented:
            report.warn(source.path, key, message)

    tokens, token_where = build_tokens(located("tokens"), report)
    secrets = SecretResolver(tokens, token_where)
    api_at = section("api")
    api = build_api(api_at, located("api", "auth", "tokens"), tokens, report)
    state = build_state(section("state"), section("database"), config_dir, home)
    plugin_roots = build_plugin_roots(located("plugin_roots"), config_file, home, report)
    plugins = build_plugins(tree.get("plugins"), merged.file_of, report)
    instances = build_instances(located("instances"), service.name, secrets, report)
    ingress_at = section("remote_ingress") if "remote_ingress" in tree and tree["remote_ingress"] is not None else None
    remote_ingress = build_remote_ingress(ingress_at, located("remote_ingress", "peers"), secrets, report)
    admin = section("admin")
    manhole_at = admin.sub("manhole") if admin.has("manhole") else None
    manhole = build_manhole(manhole_at, config_dir, home)
    metrics = build_metrics(section("metrics") if tree.get("metrics") is not None else None)
    pipelines = build_pipelines(located("pipelines"), report)
    if remote_ingress is not None and not api.enabled:
        report.warn(
            merged.file_of(("remote_ingress",)),
            "remote_ingress",
            "the relay ingress is served on api.listen, but api.enabled is false: no peer can reach it",
        )

    if report.errors:
        raise ConfigError(report.errors, report.warnings)
    return Config(
        config_file=config_file,
        config_dir=config_dir,
        service=service,
        api=api,
        state=state,
        plugin_roots=plugin_roots,
        plugins=plugins,
        tokens=tokens,
        instances=instances,
        remote_ingress=remote_ingress,
        pipelines=pipelines,
        manhole=manhole,
        metrics=metrics,
        warnings=tuple(report.warnings),
        source_files=tuple(s.path for s in sources),
    )


__all__ = ["load_config", "locate_config", "ConfigError"]
