"""
A plugin that records its start, then waits (bounded) for a gate file
before answering ok: lets a test act while a job is surely running.
"""
from __future__ import annotations

import os
import sys

GATE = r'''#!{python} -I
import json, os, sys, time
request = json.loads(sys.stdin.read())
config = request.get("config") or {{}}
with open(config["started_file"], "a") as f:
    f.write(request["job_id"] + "\n")
deadline = time.time() + 20
while not os.path.exists(config["gate_file"]) and time.time() < deadline:
    time.sleep(0.02)
print(json.dumps({{"status": "ok", "result": "gate passed"}}))
'''

MANIFEST = """manifest_spec: ductile.plugin
manifest_version: 1
name: gate
version: "1.0"
protocol: 2
entrypoint: run.py
commands:
  - name: handle
"""


def write_gate(root: str) -> str:
    directory = os.path.join(root, "gate")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "manifest.yaml"), "w") as f:
        f.write(MANIFEST)
    entry = os.path.join(directory, "run.py")
    with open(entry, "w") as f:
        f.write(GATE.format(python=sys.executable))
    os.chmod(entry, 0o755)
    return directory
