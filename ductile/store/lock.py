"""
One instance per state database.

Two processes sharing a queue file would both recover each other's
"running" jobs and run them twice.  An advisory C{flock} on
C{<state db>.lock} makes the second instance refuse to start instead.  The
lock belongs to the open file description, so it survives twistd's
daemonizing fork and is released by the kernel if the process dies.
"""
from __future__ import annotations

import fcntl
import os


class StateLocked(Exception):
    """Another live process holds the state database."""


class StateLock:
    def __init__(self, db_path: str) -> None:
        self.path = os.path.abspath(db_path) + ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"another ductile instance (pid {holder}) is using the state database "
                f"{self.path[:-5]}; stop it first or give this instance its own state.path"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
