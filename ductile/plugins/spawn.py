"""
Starting a plugin as the leader of a new session without an extra exec.

A plugin must lead its own process group so a timeout can signal it and
every child it started (twisted-craft §6).  Twisted's C{posix_spawn} path
has no way to ask for that, so the runner used to start plugins through
C{/usr/bin/setsid} — one more exec per job, measured at 0.6x the direct
spawn rate of a small C{/bin/sh} plugin.  C{os.posix_spawnp} itself takes
C{setsid=True}; this module feeds it to Twisted's process transport.

It leans on Twisted internals (the spawn helper of L{process.Process});
L{available} says whether they are all there, and the runner falls back to
C{/usr/bin/setsid} when they are not.
"""
from __future__ import annotations

import _signal
import fcntl
import os
from typing import Any, Mapping, Sequence

from twisted.internet import process

_NEEDED = ("_listOpenFDs", "_getFileActions", "_PS_CLOSE", "_PS_DUP2")


def available(reactor: Any) -> bool:
    """True when plugins can be spawned in a new session directly on C{reactor}."""
    return (
        hasattr(os, "posix_spawnp")
        and all(hasattr(process, name) for name in _NEEDED)
        and hasattr(process.Process, "_trySpawnInsteadOfFork")
        and hasattr(reactor, "_childWaker")  # a real posix reactor, not a test double
        and not getattr(reactor, "_neverUseSpawn", False)
    )


def _fd_state(fds: Any) -> list[tuple[int, bool]]:
    """C{(fd, close_on_exec)} for each of C{fds} that is open."""
    state = []
    for fd in fds:
        try:
            state.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
        except OSError:
            pass
    return state


_CLOSE_RANGE_CLOEXEC = 4  # linux/close_range.h
_close_range: Any = None  # None: not tried yet; False: unavailable


def _all_close_on_exec() -> bool:
    """
    Mark every descriptor from 3 up close-on-exec, in one
    C{close_range(3, ~0, CLOSE_RANGE_CLOEXEC)} call (Linux >= 5.11, glibc
    >= 2.34).  Then a spawn need not list C{/proc/self/fd} and ask each
    descriptor for its flag (Twisted's way, ~35 syscalls per spawn here) to
    find the ones to close in the child: none can leak into a plugin.
    The daemon loses nothing: Python opens every descriptor close-on-exec
    anyway, and one meant for a child is handed over with C{dup2}, which
    clears the flag in the child.  False when the call is unavailable; the
    caller then lists the descriptors as Twisted does.
    """
    global _close_range
    if _close_range is None:
        _close_range = False
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.close_range
            fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            return False
        if fn(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) != 0:
            return False
        _close_range = fn
        return True
    if _close_range is False:
        return False
    return _close_range(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) == 0


def _ignored_signals() -> list[int]:
    """
    The signals this process ignores, which the child must get back at
    their defaults.  Read from C{_signal} directly: C{signal.getsignal}
    wraps every answer in an enum, which costs ~30 us per spawn over
    C{NSIG} signals.
    """
    ign = _signal.SIG_IGN
    get = _signal.getsignal
    return [s for s in range(1, _signal.NSIG) if get(s) == ign]


class _SessionProcess(process.Process):
    """Twisted's Process, spawned with C{posix_spawnp(..., setsid=True)}."""

    def _trySpawnInsteadOfFork(
        self, path: Any, uid: Any, gid: Any, executable: Any, args: Any, environment: Any, kwargs: Any
    ) -> bool:
        # The same steps as Twisted's own (twisted/internet/process.py), with
        # setsid=True; never given path/uid/gid by the runner.
        if uid is not None or gid is not None or path is not None:
            return False
        fdmap = kwargs.get("fdmap") or {}
        if _all_close_on_exec():
            # Every descriptor from 3 up closes on exec, so the child gets
            # exactly the ones mapped to it; only those need describing.
            fd_state = _fd_state(set(fdmap.values()))
        else:
            fd_state = _fd_state(process._listOpenFDs())
        if environment is None:
            environment = os.environ
        ignored = _ignored_signals()
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=process._getFileActions(
                fd_state, kwargs.get("fdmap"), doClose=process._PS_CLOSE, doDup2=process._PS_DUP2
            ),
            setsigdef=ignored,
            setsid=True,
        )
        self.status = -1
        return True


def spawn_session_leader(
    reactor: Any, proto: Any, executable: str, args: Sequence[str], env: Mapping[str, str]
) -> Any:
    """Spawn C{executable} as a new session (pid == pgid); the transport."""
    return _SessionProcess(reactor, executable, list(args), dict(env), None, proto)
