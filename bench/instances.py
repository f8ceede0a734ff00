"""
The bench's ductile instances: config directories with real plugins.

- C{sh-ok}: a C{/bin/sh} plugin that reads its request line and answers ok
  (only shell builtins, so one process per job).
- C{py-ok}: the same in Python, run by an absolute interpreter path.
- the receiver: C{remote_ingress} with one peer (C{bench-peer}) whose
  C{bench.event} routes to a one-step pipeline of C{sh-ok}.
- the sender: an C{instances:} entry for the receiver and a pipeline whose
  only step is C{relay:}.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from ductile.testing.instance import write_config

SECRET = "bench-secret"
PEER = "bench-peer"
EVENT = "bench.event"

SH_PLUGIN = """#!/bin/sh
read -r request
printf '{"status":"ok","result":"ok"}\\n'
"""

PY_PLUGIN = """#!{python} -I
import sys
sys.stdin.read()
sys.stdout.write('{{"status":"ok","result":"ok"}}\\n')
"""

MANIFEST = """manifest_spec: ductile.plugin
manifest_version: 1
name: {name}
version: "1.0"
protocol: 2
entrypoint: {entry}
concurrency_safe: true
commands:
  - name: handle
"""


def write_plugin(root: str, name: str, entry: str, text: str) -> str:
    """Create plugin C{name} under C{root}; return the entrypoint's path."""
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "manifest.yaml"), "w") as f:
        f.write(MANIFEST.format(name=name, entry=entry))
    path = os.path.join(directory, entry)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def write_plugins(base: str, python: str = sys.executable) -> dict[str, str]:
    root = os.path.join(base, "plugins")
    return {
        "sh-ok": write_plugin(root, "sh-ok", "run.sh", SH_PLUGIN),
        "py-ok": write_plugin(root, "py-ok", "run.py", PY_PLUGIN.format(python=python)),
    }


def _base(base: str, name: str, max_workers: int, synchronous: str = "full") -> dict[str, Any]:
    return {
        "service": {"name": name, "tick_interval": "1h", "max_workers": max_workers},
        "plugin_roots": [os.path.join(base, "plugins")],
        "api": {"enabled": True, "listen": "127.0.0.1:0",
                "auth": {"tokens": [{"token": "bench-token", "scopes": ["*"]}]}},
        "state": {"path": "./data/state.db", "synchronous": synchronous},
        "tokens": [{"name": "bench", "key": SECRET}],
    }


def pipeline(name: str, plugins: list[str], on: str = EVENT) -> dict[str, Any]:
    return {"name": name, "on": on,
            "steps": [{"id": f"s{i + 1}", "uses": p} for i, p in enumerate(plugins)]}


def receiver_config(base: str, name: str = "receiver", max_workers: int = 2,
                    pipelines: list[dict[str, Any]] | None = None, synchronous: str = "full") -> str:
    """An instance whose relay ingress routes C{bench.event} to C{pipelines}."""
    write_plugins(base)
    cfg = _base(base, name, max_workers, synchronous)
    cfg["remote_ingress"] = {
        "listen_path": "/ingest/peer", "require_key_id": True,
        "peers": [{"name": PEER, "enabled": True, "secret_ref": "bench", "key_id": "v1", "accept": [EVENT]}],
    }
    cfg["pipelines"] = pipelines if pipelines is not None else [pipeline("ingest", ["sh-ok"])]
    return write_config(os.path.join(base, name), {"config.yaml": cfg})


def sender_config(base: str, receiver_port: int, max_workers: int) -> str:
    """C{bench-peer}: a pipeline whose one step relays C{bench.event} to the receiver."""
    write_plugins(base)
    cfg = _base(base, PEER, max_workers)
    cfg["instances"] = [{
        "name": "receiver", "enabled": True, "base_url": f"http://127.0.0.1:{receiver_port}",
        "ingress_path": f"/ingest/peer/{PEER}", "secret_ref": "bench", "key_id": "v1",
        "timeout": "10s", "allow": [EVENT],
    }]
    cfg["pipelines"] = [{"name": "relay-out", "on": "bench.out",
                         "steps": [{"id": "send", "relay": {"to": "receiver", "event": EVENT}}]}]
    return write_config(os.path.join(base, PEER), {"config.yaml": cfg})
