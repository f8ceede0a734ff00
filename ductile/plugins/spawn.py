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
        fd_state = []
        for fd in process._listOpenFDs():
            try:
                is_cloexec = fcntl.fcntl(fd, fcntl.F_GETFD, fcntl.FD_CLOEXEC)
            except OSError:
                pass
            else:
                fd_state.append((fd, is_cloexec))
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
