"""
Running one plugin process per job (contract §2.3, §2.6, §2.7).

Each job spawns the plugin's entrypoint with no arguments, writes the JSON
request and a newline to its stdin, closes stdin, and reads stdout to EOF.
The process leads a new session and process group (pid == pgid): a timeout
then signals the whole group, and a grandchild that kept stdout open dies
with its parent instead of holding the job open (see twisted-craft §6).  On
a real reactor that is done by C{posix_spawnp(setsid=True)}
(L{ductile.plugins.spawn}); otherwise through C{/usr/bin/setsid}.

C{spawnProcess} is never given C{path}, C{uid} or C{gid}, which keeps
Twisted on its C{posix_spawn} fast path. The child gets an explicit minimal
environment: secrets travel only in the request on stdin.
"""
from __future__ import annotations

import os
import signal as signals
from typing import Any, Callable, Iterable, Mapping

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ductile.plugins.manifest import Plugin
from ductile.plugins.spawn import available, spawn_session_leader
from ductile.plugins.protocol import (
    PluginResponse,
    ProtocolError,
    encode_request,
    parse_response,
)

#: sysexits.h EX_CONFIG: the plugin says its configuration is wrong, so
#: running it again cannot help.
EX_CONFIG = 78
DEFAULT_STDOUT_CAP = 10 * 1024 * 1024
DEFAULT_STDERR_TAIL = 64 * 1024
DEFAULT_GRACE = 5.0
SETSID = "/usr/bin/setsid"
PLUGIN_PATH = "/usr/bin:/bin"

log = Logger(namespace="ductile.plugins.runner")


def minimal_env(
    environ: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()
) -> dict[str, str]:
    """
    The environment every plugin starts from: a fixed C{PATH}, a UTF-8
    locale, C{HOME}, C{TMPDIR} and C{TZ} from the daemon when it has them, and
    the variables the operator named in C{passthrough}
    (C{service.plugin_env_passthrough}). Nothing else from the daemon's
    environment reaches a plugin.
    """
    environ = os.environ if environ is None else environ
    env = {"PATH": PLUGIN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    for name in ("HOME", "TMPDIR", "TZ"):
        if environ.get(name):
            env[name] = environ[name]
    for name in passthrough:
        name = name.strip()
        if name and name in environ:
            env[name] = environ[name]
    return env


@attrs.frozen
class RunOutcome:
    """
    How one plugin run ended.

    @ivar response: the validated response, when stdout held one (also for
        C{status: error}); C{None} on timeouts, caps and protocol errors.
    @ivar error: C{None} on success, else why the job failed.
    @ivar retryable: whether the retry policy may run the job again; always
        C{False} on success.
    @ivar exit_code: the process's exit code, C{None} when killed by a
        signal or never started.
    @ivar signal: the signal that ended the process, if any.
    @ivar stdout: the captured stdout (at most the cap), for C{job_log}.
    @ivar stderr_tail: the last bytes of stderr (at most the tail size).
    @ivar duration: seconds from spawn to end, on the runner's clock.
    """

    response: PluginResponse | None
    error: str | None
    retryable: bool
    timed_out: bool = False
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr_tail: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _entrypoint_problem(entrypoint: str) -> str | None:
    """Why C{entrypoint} cannot be run, in the operator's words, if it cannot."""
    if not os.path.isfile(entrypoint):
        return f"cannot run plugin: entrypoint not found: {entrypoint}"
    if not os.access(entrypoint, os.X_OK):
        return f"cannot run plugin: entrypoint is not executable: {entrypoint}"
    return None


class ProcessRunner:
    """
    Spawns plugin processes and turns each run into a L{RunOutcome}.

    @param reactor: provides C{spawnProcess} (and C{callLater}/C{seconds}
        unless C{clock} is given).
    @param stdout_cap: stdout bytes allowed; one more and the process group is
        killed and the run fails (retryable).
    @param stderr_tail: how many trailing stderr bytes to keep.
    @param grace: seconds between SIGTERM and SIGKILL.
    @param base_env: the child environment (L{minimal_env} when C{None});
        C{DUCTILE_PLUGIN_DIR} is added per plugin.
    @param clock: where timers run (defaults to C{reactor}); tests may pass a
        L{twisted.internet.task.Clock} to drive timeouts by hand.
    @param setsid: the C{setsid} program; when it is missing plugins are
        spawned directly (with a warning) and only the process itself is
        signalled, not its children.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        stdout_cap: int = DEFAULT_STDOUT_CAP,
        stderr_tail: int = DEFAULT_STDERR_TAIL,
        grace: float = DEFAULT_GRACE,
        base_env: Mapping[str, str] | None = None,
        clock: Any = None,
        setsid: str | None = SETSID,
        direct_session: bool | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.stdout_cap = stdout_cap
        self.stderr_tail = stderr_tail
        self.grace = grace
        self._base_env = dict(minimal_env() if base_env is None else base_env)
        #: Spawn straight into a new session (no setsid exec) when possible.
        self._direct_session = direct_session if direct_session is not None else available(reactor)
        if self._direct_session:
            self._setsid: str | None = None
        elif setsid and os.path.isfile(setsid) and os.access(setsid, os.X_OK):
            self._setsid = setsid
        else:
            self._setsid = None
            log.warn(
                "{setsid} not found: plugins run in the daemon's process group and a "
                "timeout kills only the plugin process, not its children",
                setsid=setsid or "setsid",
            )
        self._running: set[_PluginProcess] = set()
        self._closing = False

    @property
    def running(self) -> int:
        """How many plugin processes have not ended yet."""
        return len(self._running)

    def run(
        self,
        plugin: Plugin,
        request: Mapping[str, Any],
        timeout: float,
        on_exit: Callable[[], None] | None = None,
    ) -> "defer.Deferred[RunOutcome]":
        """
        Run C{plugin} once with C{request}; the Deferred always fires with a
        L{RunOutcome} (never errbacks), after the process and every process
        holding its output have ended.

        @param on_exit: called once the process has ended (and every process
            holding its output), before its output is parsed: the dispatcher
            starts the next plugin then, and this one's bookkeeping runs
            while it does.  Not called when the plugin was never spawned.
        """
        if self._closing:
            return defer.succeed(_refused("plugin runner is shutting down"))
        entrypoint = plugin.entrypoint
        direct = self._direct_session
        # posix_spawn reports a missing or non-executable entrypoint itself
        # (checked below, only then); the fork paths fail in the child, so
        # they look first.  Two syscalls per job saved on the common path.
        problem = None if direct else _entrypoint_problem(entrypoint)
        if problem is not None:
            return defer.succeed(_refused(problem))
        try:
            data = encode_request(request)
        except (TypeError, ValueError) as e:
            # A bug in the caller, not the plugin: retrying cannot help. The
            # message names the problem, never the request (it may hold secrets).
            return defer.succeed(
                _refused(f"request is not JSON-serialisable: {type(e).__name__}", retryable=False)
            )

        env = dict(self._base_env)
        env["DUCTILE_PLUGIN_DIR"] = plugin.directory
        if direct:
            executable, args = entrypoint, [entrypoint]
        elif self._setsid is not None:
            executable, args = self._setsid, [self._setsid, entrypoint]
        else:
            executable, args = entrypoint, [entrypoint]
        proc = _PluginProcess(
            self, plugin, data, timeout, job_id=request.get("job_id"), command=request.get("command")
        )
        proc.on_exit = on_exit
        self._running.add(proc)
        try:
            # No path=, uid=, gid=: any of them forces fork+exec instead of
            # posix_spawn, which is several times slower.
            if direct:
                spawn_session_leader(self._reactor, proc, executable, args, env)
            else:
                self._reactor.spawnProcess(proc, executable, args, env=env)
        except Exception as e:
            self._running.discard(proc)
            proc.on_exit = None
            proc.cancel_timers()
            problem = _entrypoint_problem(entrypoint) if isinstance(e, OSError) else None
            if problem is not None:
                return defer.succeed(_refused(problem))
            log.warn(
                "plugin {plugin} could not be spawned: {error}",
                plugin=plugin.name, error=str(e),
            )
            return defer.succeed(_refused(f"cannot spawn plugin {plugin.name}: {e}"))
        return proc.deferred

    def set_base_env(self, env: Mapping[str, str]) -> None:
        """The environment later runs start from (a config reload)."""
        self._base_env = dict(env)

    def shutdown(self, grace: float | None = None) -> "defer.Deferred[None]":
        """
        Refuse new runs, SIGTERM every running process group, SIGKILL those
        still alive after C{grace} seconds (default: the runner's grace).
        Fires once they have all ended; their runs fail as retryable.
        """
        self._closing = True
        grace = self.grace if grace is None else grace
        waits = []
        for proc in list(self._running):
            waits.append(proc.when_ended())
            proc.stop("plugin terminated: runner shutting down", grace)
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def _ended(self, proc: "_PluginProcess") -> None:
        self._running.discard(proc)


def _refused(error: str, retryable: bool = True) -> RunOutcome:
    return RunOutcome(response=None, error=error, retryable=retryable)


class _PluginProcess(ProcessProtocol):
    """One running plugin: feeds stdin, collects output, enforces limits."""

    def __init__(
        self,
        runner: ProcessRunner,
        plugin: Plugin,
        request: bytes,
        timeout: float,
        job_id: Any = None,
        command: Any = None,
    ) -> None:
        self.runner = runner
        self.plugin = plugin
        self.request = request
        self.timeout = timeout
        self.job_id = job_id
        self.command = command
        self.clock = runner._clock
        self.group = runner._direct_session or runner._setsid is not None
        self.deferred: defer.Deferred[RunOutcome] = defer.Deferred()
        self.started = self.clock.seconds()
        self.pid: int | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.over_cap = False
        self.timed_out = False
        #: Set when the runner stopped the process for its own reasons.
        self.stopped_because: str | None = None
        self.exited = False
        self.ended = False
        self.intervened = False
        self.timeout_call: IDelayedCall | None = None
        self.kill_call: IDelayedCall | None = None
        self.linger_call: IDelayedCall | None = None
        self.waiters: list[defer.Deferred[None]] = []
        self.on_exit: Callable[[], None] | None = None

    # -- process events ----------------------------------------------------

    def connectionMade(self) -> None:
        # transport.pid goes None once the process is reaped; with setsid
        # it is also the process group id, so keep it for group signals.
        self.pid = self.transport.pid
        # Debug: the executor has logged the job's start already.
        log.debug(
            "plugin {plugin} started: pid {pid}, job {job_id}, command {command}",
            plugin=self.plugin.name, pid=self.pid, job_id=self.job_id, command=self.command,
        )
        self.transport.write(self.request)
        self.transport.closeStdin()
        self.timeout_call = self.clock.callLater(self.timeout, self._timed_out)

    def outReceived(self, data: bytes) -> None:
        if self.over_cap:
            return
        room = self.runner.stdout_cap - len(self.stdout)
        if len(data) > room:
            self.stdout += data[:room]
            self.over_cap = True
            log.warn(
                "plugin {plugin} pid {pid} wrote more than {cap} bytes to stdout; killing it",
                plugin=self.plugin.name, pid=self.pid, cap=self.runner.stdout_cap,
            )
            self._cancel("timeout_call")
            self.intervened = True
            self._signal(signals.SIGKILL)
            return
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        excess = len(self.stderr) - self.runner.stderr_tail
        if excess > 0:
            del self.stderr[:excess]

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        if not self.ended:
            # The plugin is gone but something it started still holds its
            # stdout or stderr open; give it the grace period, then end it so
            # the job can finish.
            self.linger_call = self.clock.callLater(self.runner.grace, self._lingered)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.cancel_timers()
        if self.intervened and self.group:
            # Whatever of the group survived SIGTERM without holding a pipe.
            self._signal(signals.SIGKILL)
        self.runner._ended(self)
        on_exit, self.on_exit = self.on_exit, None
        if on_exit is not None:
            try:
                on_exit()
            except Exception:
                log.failure("the exit hook of plugin {plugin} pid {pid} failed", plugin=self.plugin.name,
                            pid=self.pid)
        exit_code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        duration = self.clock.seconds() - self.started
        outcome = self._outcome(exit_code, sig, duration)
        log.info(
            "plugin {plugin} pid {pid} ended: exit code {exit_code}, signal {signal}, "
            "{duration:.3f}s, error: {error}",
            plugin=self.plugin.name, pid=self.pid, job_id=self.job_id,
            exit_code=exit_code, signal=sig, duration=duration, error=outcome.error,
        )
        self.deferred.callback(outcome)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- control -------------------------------------------------------------

    def when_ended(self) -> "defer.Deferred[None]":
        if self.ended:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(d)
        return d

    def stop(self, why: str, grace: float) -> None:
        """SIGTERM the group now and SIGKILL it after C{grace} seconds."""
        if self.ended:
            return
        if self.stopped_because is None and not self.timed_out:
            self.stopped_because = why
        self._cancel("timeout_call")
        self.intervened = True
        self._signal(signals.SIGTERM)
        if self.kill_call is None or self.kill_call.getTime() > self.clock.seconds() + grace:
            self._cancel("kill_call")
            self.kill_call = self.clock.callLater(grace, self._kill)

    def _timed_out(self) -> None:
        self.timeout_call = None
        self.timed_out = True
        log.warn(
            "plugin {plugin} pid {pid} timed out after {timeout}s; terminating its process group",
            plugin=self.plugin.name, pid=self.pid, timeout=self.timeout,
        )
        self.stop("timeout", self.runner.grace)

    def _kill(self) -> None:
        self.kill_call = None
        log.warn(
            "plugin {plugin} pid {pid} still running after SIGTERM; sending SIGKILL",
            plugin=self.plugin.name, pid=self.pid,
        )
        self._signal(signals.SIGKILL)

    def _lingered(self) -> None:
        self.linger_call = None
        log.warn(
            "plugin {plugin} pid {pid} exited but its children kept its output open; "
            "killing its process group and closing the pipes",
            plugin=self.plugin.name, pid=self.pid,
        )
        self.intervened = True
        self._signal(signals.SIGKILL)
        # Without a process group (no setsid) the holders cannot be found;
        # closing our ends still lets the job finish with what it wrote.
        self.transport.loseConnection()

    def _signal(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            if self.group:
                os.killpg(self.pid, sig)
            elif not self.exited:
                # Without a group only the process itself can be signalled,
                # and only while it is unreaped (its pid could be reused).
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            log.warn(
                "cannot signal plugin {plugin} pid {pid}: {error}",
                plugin=self.plugin.name, pid=self.pid, error=str(e),
            )

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None and call.active():
            call.cancel()
        setattr(self, name, None)

    def cancel_timers(self) -> None:
        for name in ("timeout_call", "kill_call", "linger_call"):
            self._cancel(name)

    # -- the verdict -----------------------------------------------------------

    def _outcome(self, exit_code: int | None, sig: int | None, duration: float) -> RunOutcome:
        def done(
            error: str | None, retryable: bool, response: PluginResponse | None = None
        ) -> RunOutcome:
            return RunOutcome(
                response=response,
                error=error,
                retryable=retryable,
                timed_out=self.timed_out,
                exit_code=exit_code,
                signal=sig,
                stdout=bytes(self.stdout).decode("utf-8", "replace"),
                stderr_tail=bytes(self.stderr).decode("utf-8", "replace"),
                duration=duration,
            )

        if self.timed_out:
            return done(f"plugin timed out after {self.timeout:g}s", True)
        if self.stopped_because is not None:
            return done(self.stopped_because, True)
        if self.over_cap:
            return done(f"stdout exceeded {self.runner.stdout_cap} bytes", True)

        response: PluginResponse | None
        try:
            response = parse_response(bytes(self.stdout))
        except ProtocolError as e:
            response, problem = None, str(e)
        else:
            problem = response.error
        # A valid status:ok response wins over any exit code (contract §2.7).
        if response is not None and response.ok:
            return done(None, False, response)
        if exit_code == EX_CONFIG:
            return done(
                f"plugin exited with code 78 (EX_CONFIG, not retried): {problem}", False, response
            )
        if response is not None:
            return done(response.error, response.retry, response)
        if sig is not None:
            problem += f" (killed by signal {sig})"
        elif exit_code:
            problem += f" (exit code {exit_code})"
        return done(f"invalid plugin response: {problem}", True)
