"""
C{ductile config check}: load the configuration the service would load and
say what is in it, and everything wrong with it.

Secrets are never printed: a secret shows as its token name and C{***}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ductile.config.errors import ConfigError
from ductile.config.loader import load_config, locate_config
from ductile.config.models import Config

MASK = "***"


def register(subparsers: Any) -> None:
    """Add the C{config} noun and its C{check} verb."""
    noun = subparsers.add_parser("config", help="inspect the configuration")
    verbs = noun.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    check = verbs.add_parser(
        "check",
        help="load the config and report what it holds and any problems",
        description="Load everything the service would load; exit 0 when loadable, 1 otherwise.",
    )
    check.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="config file, or directory holding config.yaml "
        "(default: $DUCTILE_CONFIG_DIR, ~/.config/ductile, /etc/ductile)",
    )
    check.add_argument("--strict", action="store_true", help="treat unknown keys as errors")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=run_check)


def count_manifests(roots: tuple[str, ...]) -> int:
    """How many C{manifest.yaml} files lie under the plugin roots."""
    count = 0
    for root in roots:
        for _dirpath, _dirs, files in os.walk(root):
            count += files.count("manifest.yaml")
    return count


def summarise(config: Config) -> dict[str, Any]:
    """The JSON-able summary of a loaded config; secrets masked."""
    ingress = config.remote_ingress
    return {
        "ok": True,
        "config_file": config.config_file,
        "files": list(config.source_files),
        "service": {"name": config.service.name, "tick_interval": config.service.tick_interval},
        "api": {
            "enabled": config.api.enabled,
            "listen": config.api.listen,
            "credentials": [{"name": t.label, "token": MASK, "scopes": list(t.scopes)} for t in config.api.tokens],
        },
        "state": {"path": config.state.path},
        "tokens": [
            {"name": t.name, "key": MASK, "scopes": list(t.scopes), "scopes_file": t.scopes_file}
            for t in config.tokens
        ],
        "instances": [
            {
                "name": i.name,
                "enabled": i.enabled,
                "url": i.url,
                "key_id": i.key_id,
                "secret_ref": i.secret_ref,
                "secret": MASK,
                "timeout": i.timeout,
                "allow": list(i.allow),
            }
            for i in config.instances
        ],
        "remote_ingress": None
        if ingress is None
        else {
            "listen_path": ingress.listen_path,
            "max_body_size": ingress.max_body_size,
            "allowed_clock_skew": ingress.allowed_clock_skew,
            "require_key_id": ingress.require_key_id,
        },
        "peers": []
        if ingress is None
        else [
            {
                "name": p.name,
                "enabled": p.enabled,
                "keys": [{"key_id": k.key_id, "secret_ref": k.secret_ref, "secret": MASK} for k in p.keys],
                "accept": list(p.accept),
                "baggage_allow": list(p.baggage_allow),
            }
            for p in ingress.peers
        ],
        "pipelines": len(config.pipelines),
        "plugin_roots": list(config.plugin_roots),
        "plugins_found": count_manifests(config.plugin_roots),
        "warnings": list(config.warnings),
        "errors": [],
    }


def _text(summary: dict[str, Any]) -> list[str]:
    def types(values: list[str]) -> str:
        return ", ".join(values) if values else "all"

    lines = [f"config: {summary['config_file']}", f"service: {summary['service']['name']}"]
    api = summary["api"]
    lines.append(f"api: {'enabled' if api['enabled'] else 'disabled'}, listen {api['listen']}")
    lines.append(f"state: {summary['state']['path']}")
    for t in summary["tokens"]:
        scopes = f" (scopes: {', '.join(t['scopes'])})" if t["scopes"] else ""
        lines.append(f"token: {t['name']} = {MASK}{scopes}")
    lines.append(f"instances: {len(summary['instances'])}")
    for i in summary["instances"]:
        state = "" if i["enabled"] else " [disabled]"
        lines.append(
            f"  {i['name']}{state} -> {i['url']} key_id={i['key_id'] or '-'}"
            f" secret={i['secret_ref']}:{MASK} timeout={i['timeout']:g}s allow={types(i['allow'])}"
        )
    ingress = summary["remote_ingress"]
    if ingress is None:
        lines.append("remote_ingress: not configured")
    else:
        lines.append(
            f"remote_ingress: {ingress['listen_path']}/<peer> max_body_size={ingress['max_body_size']}"
            f" allowed_clock_skew={ingress['allowed_clock_skew']:g}s require_key_id={str(ingress['require_key_id']).lower()}"
        )
    lines.append(f"peers: {len(summary['peers'])}")
    for p in summary["peers"]:
        state = "" if p["enabled"] else " [disabled]"
        keys = ", ".join(f"{k['key_id'] or '*'}={k['secret_ref']}:{MASK}" for k in p["keys"])
        lines.append(
            f"  {p['name']}{state} keys=[{keys}] accept={types(p['accept'])}"
            f" baggage={', '.join(p['baggage_allow']) or 'none'}"
        )
    lines.append(f"pipelines: {summary['pipelines']}")
    lines.append(f"plugins found: {summary['plugins_found']} (under {len(summary['plugin_roots'])} plugin root(s))")
    if "plugins_loaded" in summary:
        lines.append(f"plugins loaded: {', '.join(summary['plugins_loaded']) or 'none'}")
    return lines


def run_check(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        config = load_config(args.config, strict=args.strict)
    except ConfigError as e:
        try:
            config_file = locate_config(args.config, os.environ)
        except ConfigError:
            config_file = None
        if args.json:
            result = {"ok": False, "config_file": config_file, "warnings": list(e.warnings), "errors": list(e.problems)}
            out.write(json.dumps(result, indent=2) + "\n")
        else:
            if config_file:
                out.write(f"config: {config_file}\n")
            _write_list(out, "warning", e.warnings)
            _write_list(out, "error", e.problems)
            out.write("config check FAILED\n")
        return 1
    # Load everything the service would: plugins, pipelines, the manhole.
    from ductile.admin import AdminConfigError, check_manhole
    from ductile.instance import InstanceError, build_instance

    summary = summarise(config)
    warnings = list(config.warnings)
    errors: list[str] = []
    try:
        instance = build_instance(config)
    except InstanceError as e:
        errors += str(e).splitlines()
    else:
        summary["plugins_loaded"] = sorted(instance.plugins)
        warnings += [f"plugin not loaded: {p}" for p in instance.plugin_problems]
    if config.manhole is not None:
        try:
            check_manhole(config.manhole)
        except AdminConfigError as e:
            errors.append(str(e))
    summary["warnings"] = warnings
    summary["errors"] = errors
    summary["ok"] = not errors
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.write("\n".join(_text(summary)) + "\n")
        _write_list(out, "warning", warnings)
        _write_list(out, "error", errors)
        out.write("config check FAILED\n" if errors else "config OK\n")
    return 1 if errors else 0


def _write_list(out: Any, kind: str, items: tuple[str, ...] | list[str]) -> None:
    if not items:
        return
    out.write(f"{len(items)} {kind}(s):\n")
    for item in items:
        out.write(f"  {kind}: {item}\n")
