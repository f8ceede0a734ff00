"""
Real ductile daemons for the reliability runs: C{twistd -n ductile} child
processes on loopback ports, their configs, logs and SQLite files in one
scratch directory, and plain synchronous helpers to drive and inspect them.

The orchestrator is deliberately synchronous (subprocess, http.client,
sqlite3): it is the outside world poking at the daemons, and every wait in
it is bounded by a deadline.

Cleanup: every daemon runs in its own session; L{Registry.cleanup} kills
each daemon we started and then every process whose command line names our
scratch directory (plugin processes, which run in sessions of their own).
Nothing is ever killed by name.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any, Callable

import yaml

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class HarnessError(Exception):
    """The run itself could not proceed (a daemon would not start, ...)."""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_yaml(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def twistd_command() -> list[str]:
    """The C{twistd} of this interpreter's environment (or the same entry point run by it)."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


class Registry:
    """Every daemon started in this run, for counting crashes and cleanup."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.daemons: list[Daemon] = []

    def cleanup(self) -> None:
        for daemon in self.daemons:
            daemon.kill_hard()
        reap_strays(self.workdir)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def strays(workdir: str) -> list[int]:
    """Live processes (not us) whose command line names C{workdir}."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and workdir in _cmdline(int(name)) and process_alive(int(name)):
            out.append(int(name))
    return out


def reap_strays(workdir: str) -> list[int]:
    found = strays(workdir)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


class Daemon:
    """One ductile instance run by twistd; restartable on the same port."""

    def __init__(self, registry: Registry, name: str, config_dir: str, port: int, token: str) -> None:
        self.registry = registry
        self.name = name
        self.config_dir = config_dir
        self.port = port
        self.token = token
        self.log_path = os.path.join(config_dir, "twistd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = True
        self.starts = 0
        self.unexpected_exits = 0
        registry.daemons.append(self)

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> float:
        """Start twistd and wait for the "started:" line; return the seconds it took."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"{self.name} is already running")
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(self.log_path, "ab")
        began = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                twistd_command() + ["-n", "--pidfile=", "ductile", "--config", self.config_dir],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.config_dir, env=env, start_new_session=True,
            )
        finally:
            log.close()
        self.starts += 1
        self.expected_exit = False
        marker = f"{self.name} started:".encode()
        deadline = began + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if marker in f.read():
                    return time.monotonic() - began
            if self.proc.poll() is not None:
                self.expected_exit = True
                raise HarnessError(f"{self.name} exited with {self.proc.returncode} while starting; see {self.log_path}")
            time.sleep(0.05)
        self.kill_hard()
        raise HarnessError(f"{self.name} not ready within {timeout:g}s; see {self.log_path}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> bool:
        """Count an exit we did not cause; return whether it is running."""
        if self.proc is not None and self.proc.poll() is not None and not self.expected_exit:
            self.expected_exit = True
            self.unexpected_exits += 1
        return self.running()

    def kill9(self) -> None:
        """C{kill -9} the daemon process alone, as a crash would: its plugins live on."""
        assert self.proc is not None
        self.expected_exit = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM and wait; return C{(exit code, seconds)} (code C{None}: had to SIGKILL)."""
        assert self.proc is not None
        self.expected_exit = True
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_hard()
            code = None
        return code, time.monotonic() - began

    def kill_hard(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.expected_exit = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=STOP_TIMEOUT)

    # -- reading --------------------------------------------------------------

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(os.path.join(self.config_dir, "data", "state.db"), timeout=10.0)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = self.db()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    # -- HTTP -----------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """One API call; raises C{OSError} / C{http.client.HTTPException} on transport failure."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self.token}", "Connection": "close"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")


class Timeline:
    """Actions due at monotonic times, run by whoever calls L{tick}."""

    def __init__(self) -> None:
        self.actions: list[tuple[float, str, Callable[[], None]]] = []
        self.done: list[str] = []

    def at(self, delay: float, label: str, action: Callable[[], None]) -> None:
        self.actions.append((time.monotonic() + delay, label, action))

    def tick(self) -> None:
        now = time.monotonic()
        due = [a for a in self.actions if a[0] <= now]
        for item in due:
            self.actions.remove(item)
            item[2]()
            self.done.append(item[1])

    def pending(self) -> bool:
        return bool(self.actions)
