"""
Misbehaving plugins for the plugin-fault scenario.  Each records the pids it
creates under C{config.pid_dir} so the run can prove none outlives its job.
"""
from __future__ import annotations

import os
import sys

HEADER = r'''#!{python} -I
import json, os, sys, time
request = json.loads(sys.stdin.read())
pid_dir = (request.get("config") or {{}}).get("pid_dir")
def note_pid():
    if pid_dir:
        with open(os.path.join(pid_dir, "%s-%d" % ({name!r}, os.getpid())), "w") as f:
            f.write(str(os.getpid()))
note_pid()
'''

BODIES = {
    # Never answers: the job times out (and is retried, then timed_out).
    "hang": "time.sleep(3600)\n",
    # Forks; parent and child both hang: the whole group must die on timeout.
    "fork-hang": "if os.fork() == 0:\n    note_pid()\ntime.sleep(3600)\n",
    # Answers ok and exits, but leaves a child holding stdout open: the job
    # must still finish (after the runner's grace) and the child must die.
    "orphan-holds-stdout": (
        "if os.fork() == 0:\n    note_pid()\n    time.sleep(3600)\n"
        "print(json.dumps({'status': 'ok', 'result': 'answered before the child hangs'}))\n"
        "sys.stdout.flush()\nos._exit(0)\n"
    ),
    # Writes far past the stdout cap.
    "flood": "chunk = 'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.write(chunk)\n",
    # sysexits EX_CONFIG: never retried.
    "exit-78": "print('bad configuration', file=sys.stderr)\nsys.exit(78)\n",
    # Not the protocol.
    "garbage": "print('this is {{not json at all')\n",
}

MANIFEST = """manifest_spec: ductile.plugin
manifest_version: 1
name: {name}
version: "1.0"
protocol: 2
entrypoint: run.py
commands:
  - name: handle
"""


def write_fault_plugins(root: str) -> list[str]:
    names = []
    for name, body in BODIES.items():
        directory = os.path.join(root, name)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "manifest.yaml"), "w") as f:
            f.write(MANIFEST.format(name=name))
        entry = os.path.join(directory, "run.py")
        with open(entry, "w") as f:
            f.write(HEADER.format(python=sys.executable, name=name) + body.replace("{{", "{"))
        os.chmod(entry, 0o755)
        names.append(name)
    return names
