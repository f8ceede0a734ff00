#!/usr/bin/env python3
"""Test plugin for ductile's runner tests: payload.mode picks the behaviour."""
import json
import os
import signal
import subprocess
import sys


def reply(obj, code=0):
    sys.stdout.write(json.dumps(obj))
    sys.stdout.flush()
    sys.exit(code)


request = json.loads(sys.stdin.read())
payload = request.get("payload") or {}
mode = payload.get("mode", "ok")

if mode == "ok":
    reply({
        "status": "ok",
        "result": "handled " + request["command"],
        "events": [
            {"type": "echo.done", "payload": {"job_id": request["job_id"]}},
            {"type": "echo.other", "payload": {"result": "mine"}, "dedupe_key": "k1",
             "source": "elsewhere", "event_id": "e-1",
             "timestamp": "2026-01-02T03:04:05.5Z"},
        ],
        "state_updates": {"request": request},
        "logs": [{"level": "info", "message": "hello"}],
    })
elif mode == "env":
    reply({"status": "ok", "result": "env",
           "state_updates": {"env": dict(os.environ), "cwd": os.getcwd()}})
elif mode == "exit78":
    reply({"status": "error", "error": "missing api key"}, 78)
elif mode == "nonzero_ok":
    reply({"status": "ok", "result": "fine anyway"}, 3)
elif mode == "error_noretry":
    reply({"status": "error", "error": "bad input", "retry": False})
elif mode == "error_retry":
    reply({"status": "error", "error": "try later"})
elif mode == "garbage":
    sys.stdout.write("this is not json\n")
elif mode == "empty":
    sys.exit(2)
elif mode == "stderr":
    sys.stderr.write("A" * 5000 + "TAIL-END")
    sys.stderr.flush()
    reply({"status": "ok", "result": "noisy"})
elif mode == "bigout":
    sys.stdout.write("x" * int(payload["size"]))
    sys.stdout.flush()
    signal.pause()  # hang until killed
elif mode == "hang":
    if payload.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The grandchild inherits stdout, so the job's pipe stays open as long as
    # it lives: only killing the whole process group ends the job.
    child = subprocess.Popen(["sleep", "1000"])
    tmp = payload["pidfile"] + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (os.getpid(), child.pid))
    os.rename(tmp, payload["pidfile"])
    signal.pause()  # hang until killed
else:
    reply({"status": "error", "error": "unknown mode " + mode, "retry": False})
