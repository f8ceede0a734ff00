"""
Real subprocess plugins for tests, written on the fly into a plugin root.

The recorder plugin appends one JSON line per run to C{config.record_file}
(so a test can count side effects exactly) and can emit an event, fail, or
fail only on its first N runs; C{config.record_env} (a list of names) also
records those environment variables as the plugin saw them.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

RECORDER = r'''#!{python} -I
import json, os, sys
request = json.loads(sys.stdin.read())
config = request.get("config") or {{}}
record = config.get("record_file")
line = {{
    "plugin": {name!r},
    "command": request["command"],
    "job_id": request["job_id"],
    "event": request.get("event"),
    "context": request.get("context"),
    "payload": request.get("payload"),
    "state": request.get("state"),
}}
if config.get("record_env"):
    line["env"] = {{n: os.environ.get(n) for n in config["record_env"]}}
runs = 0
if record:
    if os.path.exists(record):
        with open(record) as f:
            runs = sum(1 for l in f if json.loads(l)["plugin"] == {name!r})
    with open(record, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
if config.get("sleep"):
    import time
    time.sleep(float(config["sleep"]))
fail_first = int(config.get("fail_first", 0))
if runs < fail_first:
    print(json.dumps({{"status": "error", "error": "failing run %d on purpose" % (runs + 1)}}))
    sys.exit(0)
if config.get("fail") == "permanent":
    print(json.dumps({{"status": "error", "error": "refused on purpose", "retry": False}}))
    sys.exit(0)
response = {{"status": "ok", "result": "%s ran %s" % ({name!r}, request["command"])}}
emit = config.get("emit")
if emit:
    payload = dict((request.get("event") or {{}}).get("payload") or request.get("payload") or {{}})
    payload["seen_by_" + {name!r}.replace("-", "_")] = True
    event = {{"type": emit, "payload": payload}}
    if config.get("emit_dedupe_key"):
        event["dedupe_key"] = payload.get(config["emit_dedupe_key"])
    response["events"] = [event]
response["state_updates"] = {{"runs": runs + 1}}
print(json.dumps(response))
'''

MANIFEST = """manifest_spec: ductile.plugin
manifest_version: 1
name: {name}
version: "1.0"
protocol: 2
entrypoint: run.py
commands:
{commands}
"""


def write_recorder(root: str, name: str, commands: Sequence[str] = ("handle", "poll")) -> str:
    """Create the recorder plugin C{name} under C{root}; return its directory."""
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    with open(os.path.join(directory, "manifest.yaml"), "w") as f:
        f.write(MANIFEST.format(name=name, commands="".join(f"  - name: {c}\n" for c in commands)))
    entry = os.path.join(directory, "run.py")
    with open(entry, "w") as f:
        f.write(RECORDER.format(python=sys.executable, name=name))
    os.chmod(entry, 0o755)
    return directory
