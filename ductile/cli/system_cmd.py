"""
C{ductile system reload}: ask the running instance to reload its config
(C{POST /system/reload} on its API, with a configured C{system:rw} token).

Exit 0 once the instance runs the new config; 1 with the instance's reason
when it refused it (it keeps running the old one), or when it cannot be
reached.  C{systemctl reload ductile@NAME} (SIGHUP) does the same without a
token.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

#: Scopes that may reload (contract §6).
RELOAD_SCOPES = ("system:rw", "*")
#: Seconds to wait for the answer: a reload discovers plugins and compiles
#: pipelines, which can take a moment on a big config.
RELOAD_TIMEOUT = 60.0


def register(subparsers: Any) -> None:
    system = subparsers.add_parser("system", help="control a running instance (reload its config)")
    verbs = system.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    reload = verbs.add_parser(
        "reload",
        help="reload the config of the running instance",
        description=(
            "Ask the running instance (its API on api.listen, with a token holding system:rw) to load "
            "its config again. Exit 0 once it runs the new config; 1 if it refused it (the old config "
            "keeps running) or cannot be reached."
        ),
    )
    reload.add_argument("--config", metavar="PATH", help="config file or directory (for api.listen and a token)")
    reload.add_argument("--api-url", metavar="URL", help="the instance API, e.g. http://127.0.0.1:8080 "
                        "(default: from api.listen in the config)")
    reload.add_argument("--api-key", metavar="TOKEN", help="API token with system:rw (default: $DUCTILE_API_KEY, "
                        "else one from the config)")
    reload.add_argument("--json", action="store_true", help="print the instance's answer as JSON")
    reload.set_defaults(handler=reload_handler)


def reload_token(config: Any) -> str | None:
    """A configured API token allowed to reload (C{system:rw} or C{*}), if any."""
    from ductile.web.auth import expand_scopes

    for token in config.api.tokens:
        if any(s in expand_scopes(token.scopes) for s in RELOAD_SCOPES):
            return str(token.token)
    return None


def reload_handler(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Any = None,
) -> int:
    from ductile import jobview
    from ductile.cli.deliveries import ApiUnreachable, api_base_url, post_json

    out, err = out or sys.stdout, err or sys.stderr
    environ = os.environ if environ is None else environ
    prog = "ductile system reload"
    base = (args.api_url or "").rstrip("/") or None
    token = (args.api_key or "").strip() or environ.get("DUCTILE_API_KEY", "").strip() or None
    if base is None or token is None:
        from ductile.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"{prog}: the config does not load, so the instance would refuse it too "
                  f"(it keeps running the old one):\n{e}", file=err)
            return 1
        if base is None:
            if not config.api.enabled:
                print(f"{prog}: api.enabled is false in the config: no API to ask; "
                      "send SIGHUP instead (systemctl reload ductile@NAME)", file=err)
                return 1
            base = api_base_url(config.api.listen)
        if token is None:
            token = reload_token(config)
            if token is None:
                print(f"{prog}: no API token with system:rw in the config (api.auth.tokens); "
                      "give --api-key, or send SIGHUP instead (systemctl reload ductile@NAME)", file=err)
                return 1
    try:
        status, body = post_json(base, token, "/system/reload", b"{}",
                                 "check the instance's log for 'config reloaded'", RELOAD_TIMEOUT)
    except ApiUnreachable as e:
        print(f"{prog}: the instance is not reachable at {base} ({e}); is it running?", file=err)
        return 1
    except jobview.InspectError as e:
        print(f"{prog}: {e}", file=err)
        return 1
    if status == 200:
        if args.json:
            print(json.dumps(body, indent=2), file=out)
            return 0
        print(f"Reloaded at {body.get('reloaded_at', '?')}", file=out)
        for change in body.get("changes") or ["no plugin, pipeline, relay or token changes"]:
            print(f"  {change}", file=out)
        for note in body.get("restart_needed") or ():
            print(f"  needs a restart: {note}", file=out)
        for warning in body.get("warnings") or ():
            print(f"  warning: {warning}", file=out)
        if body.get("dead_jobs"):
            print(f"  {len(body['dead_jobs'])} queued job(s) of removed or disabled plugins are now dead", file=out)
        return 0
    message = body.get("error", body)
    if status == 409:
        print(f"{prog}: the instance refused the new config and keeps running the old one:\n{message}", file=err)
    elif status == 401:
        print(f"{prog}: the instance does not accept this token ({message}); if this reload changes "
              "the token, send SIGHUP instead (systemctl reload ductile@NAME)", file=err)
    else:
        print(f"{prog}: the instance answered {status}: {message}", file=err)
    return 1
