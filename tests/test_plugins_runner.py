"""
The plugin process runner (contract §2.3, §2.6, §2.7; twisted-craft §6).

C{RunnerLogicTests} drive the process protocol by hand with a fake reactor,
a L{Clock} and recorded signals. C{RealProcessTests} spawn the real test
plugins under C{tests/plugins/} on the real reactor.
"""
from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import attrs
from twisted.internet import defer, error, reactor, task
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.plugins.discovery import discover
from ductile.plugins.manifest import Plugin
from ductile.plugins.protocol import build_request, normalize_events
from ductile.plugins.runner import SETSID, ProcessRunner, RunOutcome, minimal_env

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
SECRET = "s3cret-value-never-logged"


def fixture_plugins() -> dict[str, Plugin]:
    found = discover([FIXTURES])
    assert not found.problems, found.problems
    return dict(found.plugins)


def make_request(mode: str = "ok", command: str = "poll", **payload: Any) -> dict[str, Any]:
    return build_request(
        job_id=str(uuid.uuid4()),
        command=command,
        config={"greeting": "hi"},
        state={"n": 1},
        payload={"mode": mode, **payload},
        context={"ductile_plugin": "echo-py"},
        deadline_at="2026-01-01T00:00:00Z",
        secrets={"token": SECRET},
    )


# -- fakes for the deterministic tests -------------------------------------


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.written = b""
        self.stdin_closed = False
        self.lost = False

    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.lost = True


@attrs.define
class Spawn:
    proto: Any
    executable: str
    args: list[str]
    kwargs: dict[str, Any]


class FakeProcessReactor(task.Clock):
    """A Clock that records C{spawnProcess} calls and connects a fake transport."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.spawns: list[Spawn] = []
        self.fail = fail
        self.next_pid = 4242

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        self.spawns.append(Spawn(proto, executable, args, kwargs))
        transport = FakeTransport(self.next_pid)
        self.next_pid += 1
        proto.makeConnection(transport)
        return transport


def ended(proto: Any, code: int | None = 0, sig: int | None = None) -> None:
    """Finish a fake process the way Twisted does: exited, then ended."""
    if code == 0 and sig is None:
        reason = Failure(error.ProcessDone(0))
    else:
        reason = Failure(error.ProcessTerminated(exitCode=code, signal=sig))
    proto.processExited(reason)
    proto.transport.pid = None
    proto.processEnded(reason)


class RunnerLogicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.plugin = fixture_plugins()["echo-py"]
        self.reactor = FakeProcessReactor()
        self.signals: list[tuple[str, int, int]] = []
        self.patch(os, "killpg", lambda pid, sig: self.signals.append(("killpg", pid, sig)))
        self.patch(os, "kill", lambda pid, sig: self.signals.append(("kill", pid, sig)))
        self.env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
        self.runner = ProcessRunner(
            self.reactor, base_env=self.env, grace=5.0, stdout_cap=100, stderr_tail=10
        )

    def start(self, request: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[Any, Any]:
        d = self.runner.run(self.plugin, request or make_request(), timeout)
        return d, self.reactor.spawns[-1].proto

    def test_spawn_arguments(self) -> None:
        """
        setsid, then the entrypoint with no arguments; the explicit env plus
        DUCTILE_PLUGIN_DIR; and nothing that would force fork+exec.
        """
        request = make_request()
        d, proto = self.start(request)
        [spawn] = self.reactor.spawns
        self.assertEqual(spawn.executable, SETSID)
        self.assertEqual(spawn.args, [SETSID, self.plugin.entrypoint])
        self.assertEqual(list(spawn.kwargs), ["env"])
        self.assertEqual(
            spawn.kwargs["env"], {**self.env, "DUCTILE_PLUGIN_DIR": self.plugin.directory}
        )
        transport = proto.transport
        self.assertEqual(json.loads(transport.written), request)
        self.assertTrue(transport.written.endswith(b"\n"))
        self.assertTrue(transport.stdin_closed)
        self.assertEqual(self.runner.running, 1)
        self.assertNoResult(d)

    def test_success(self) -> None:
        d, proto = self.start()
        self.reactor.advance(1.5)
        proto.outReceived(b'{"status":"ok",')
        proto.outReceived(b'"result":"done"}')
        proto.errReceived(b"0123456789abcdef")
        ended(proto)
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.ok)
        self.assertEqual(outcome.response.result, "done")
        self.assertEqual(outcome.error, None)
        self.assertFalse(outcome.retryable)
        self.assertEqual((outcome.exit_code, outcome.signal), (0, None))
        self.assertEqual(outcome.stdout, '{"status":"ok","result":"done"}')
        self.assertEqual(outcome.stderr_tail, "6789abcdef")
        self.assertEqual(outcome.duration, 1.5)
        self.assertEqual(self.runner.running, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.signals, [])

    def test_timeout_terms_then_kills_group(self) -> None:
        d, proto = self.start(timeout=10.0)
        self.reactor.advance(9.9)
        self.assertEqual(self.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.signals, [("killpg", 4242, signal.SIGTERM)])
        self.reactor.advance(4.9)
        self.assertEqual(len(self.signals), 1)
        self.reactor.advance(0.1)
        self.assertEqual(self.signals[1], ("killpg", 4242, signal.SIGKILL))
        self.assertNoResult(d)
        ended(proto, None, signal.SIGKILL)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.error, "plugin timed out after 10s")
        self.assertTrue(outcome.timed_out)
        self.assertTrue(outcome.retryable)
        self.assertEqual(outcome.signal, signal.SIGKILL)
        self.assertEqual(outcome.duration, 15.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_ends_during_grace(self) -> None:
        """A plugin that obeys SIGTERM is not SIGKILLed later by a stray timer."""
        d, proto = self.start(timeout=1.0)
        proto.outReceived(b'{"status":"ok","result":"late"}')
        self.reactor.advance(1.0)
        ended(proto, None, signal.SIGTERM)
        outcome = self.successResultOf(d)
        # Output that arrived is kept for the log, but it is still a timeout.
        self.assertTrue(outcome.timed_out)
        self.assertIsNone(outcome.response)
        self.assertIn("late", outcome.stdout)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # SIGTERM, then one SIGKILL sweep of the group at the end, no more.
        self.assertEqual(
            self.signals,
            [("killpg", 4242, signal.SIGTERM), ("killpg", 4242, signal.SIGKILL)],
        )

    def test_stdout_cap(self) -> None:
        d, proto = self.start()
        proto.outReceived(b"x" * 60)
        proto.outReceived(b"x" * 40)
        self.assertEqual(self.signals, [])
        proto.outReceived(b"y")
        self.assertEqual(self.signals, [("killpg", 4242, signal.SIGKILL)])
        proto.outReceived(b"z" * 1000)
        ended(proto, None, signal.SIGKILL)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.error, "stdout exceeded 100 bytes")
        self.assertTrue(outcome.retryable)
        self.assertFalse(outcome.timed_out)
        self.assertEqual(outcome.stdout, "x" * 100)

    def test_exit_78_not_retryable(self) -> None:
        for stdout, detail in [
            (b'{"status":"error","error":"no key","retry":true}', "no key"),
            (b"", "plugin produced no output on stdout"),
        ]:
            d, proto = self.start()
            proto.outReceived(stdout)
            ended(proto, 78)
            outcome = self.successResultOf(d)
            self.assertEqual(
                outcome.error, f"plugin exited with code 78 (EX_CONFIG, not retried): {detail}"
            )
            self.assertFalse(outcome.retryable)
            self.assertEqual(outcome.exit_code, 78)

    def test_nonzero_exit_with_ok_response_succeeds(self) -> None:
        for code in (1, 78):
            d, proto = self.start()
            proto.outReceived(b'{"status":"ok","result":"fine"}')
            ended(proto, code)
            outcome = self.successResultOf(d)
            self.assertTrue(outcome.ok)
            self.assertEqual(outcome.exit_code, code)

    def test_status_error(self) -> None:
        d, proto = self.start()
        proto.outReceived(b'{"status":"error","error":"bad input","retry":false}')
        ended(proto, 1)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.error, "bad input")
        self.assertFalse(outcome.retryable)
        self.assertEqual(outcome.response.error, "bad input")

        d, proto = self.start()
        proto.outReceived(b'{"status":"error","error":"later"}')
        ended(proto)
        self.assertTrue(self.successResultOf(d).retryable)

    def test_invalid_response(self) -> None:
        d, proto = self.start()
        proto.outReceived(b"oops")
        ended(proto, 2)
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.error.startswith("invalid plugin response: plugin output is not valid JSON"))
        self.assertTrue(outcome.error.endswith("(exit code 2)"))
        self.assertTrue(outcome.retryable)
        self.assertEqual(outcome.stdout, "oops")

        d, proto = self.start()
        ended(proto, None, signal.SIGSEGV)
        self.assertEqual(
            self.successResultOf(d).error,
            f"invalid plugin response: plugin produced no output on stdout "
            f"(killed by signal {int(signal.SIGSEGV)})",
        )

    def test_linger_kills_children_holding_output(self) -> None:
        """The plugin exited but a child keeps the pipe open: kill the group after grace."""
        d, proto = self.start()
        proto.outReceived(b'{"status":"ok","result":"r"}')
        proto.processExited(Failure(error.ProcessDone(0)))
        self.reactor.advance(4.9)
        self.assertEqual(self.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.signals, [("killpg", 4242, signal.SIGKILL)])
        self.assertTrue(proto.transport.lost)
        proto.processEnded(Failure(error.ProcessDone(0)))
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.ok)

    def test_linger_without_setsid_closes_pipes(self) -> None:
        """
        Without a process group the children cannot be signalled, but closing
        the pipes still ends the job; the exited pid is never signalled.
        """
        runner = ProcessRunner(self.reactor, setsid=None, base_env={})
        d = runner.run(self.plugin, make_request(), 60.0)
        proto = self.reactor.spawns[-1].proto
        proto.outReceived(b'{"status":"ok","result":"r"}')
        proto.processExited(Failure(error.ProcessDone(0)))
        self.reactor.advance(5.0)
        self.assertTrue(proto.transport.lost)
        self.assertEqual(self.signals, [])
        proto.processEnded(Failure(error.ProcessDone(0)))
        self.assertTrue(self.successResultOf(d).ok)

    def test_shutdown(self) -> None:
        d1, p1 = self.start()
        d2, p2 = self.start()
        stopped = self.runner.shutdown(grace=2.0)
        self.assertEqual(
            sorted(self.signals),
            [("killpg", 4242, signal.SIGTERM), ("killpg", 4243, signal.SIGTERM)],
        )
        ended(p1, None, signal.SIGTERM)
        self.assertNoResult(stopped)
        self.reactor.advance(2.0)
        self.assertIn(("killpg", 4243, signal.SIGKILL), self.signals)
        ended(p2, None, signal.SIGKILL)
        self.assertIsNone(self.successResultOf(stopped))
        for d in (d1, d2):
            outcome = self.successResultOf(d)
            self.assertEqual(outcome.error, "plugin terminated: runner shutting down")
            self.assertTrue(outcome.retryable)
            self.assertFalse(outcome.timed_out)
        refused = self.successResultOf(self.runner.run(self.plugin, make_request(), 1.0))
        self.assertEqual(refused.error, "plugin runner is shutting down")
        self.assertTrue(refused.retryable)
        self.assertEqual(len(self.reactor.spawns), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_shutdown_with_nothing_running(self) -> None:
        self.assertIsNone(self.successResultOf(self.runner.shutdown()))

    def test_spawn_failure(self) -> None:
        runner = ProcessRunner(FakeProcessReactor(fail=OSError(7, "Argument list too long")))
        outcome = self.successResultOf(runner.run(self.plugin, make_request(), 1.0))
        self.assertEqual(
            outcome.error, "cannot spawn plugin echo-py: [Errno 7] Argument list too long"
        )
        self.assertTrue(outcome.retryable)
        self.assertEqual(runner.running, 0)

    def test_entrypoint_missing_or_not_executable(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        missing = attrs.evolve(self.plugin, entrypoint=os.path.join(directory, "run.py"))
        outcome = self.successResultOf(self.runner.run(missing, make_request(), 1.0))
        self.assertEqual(
            outcome.error, f"cannot run plugin: entrypoint not found: {missing.entrypoint}"
        )
        self.assertTrue(outcome.retryable)
        with open(missing.entrypoint, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(missing.entrypoint, 0o644)
        outcome = self.successResultOf(self.runner.run(missing, make_request(), 1.0))
        self.assertEqual(
            outcome.error, f"cannot run plugin: entrypoint is not executable: {missing.entrypoint}"
        )
        self.assertEqual(self.reactor.spawns, [])

    def test_unserialisable_request(self) -> None:
        outcome = self.successResultOf(self.runner.run(self.plugin, {"x": object()}, 1.0))
        self.assertEqual(outcome.error, "request is not JSON-serialisable: TypeError")
        self.assertFalse(outcome.retryable)

    def test_without_setsid(self) -> None:
        with capturedLogs() as events:
            runner = ProcessRunner(self.reactor, setsid="/nonexistent/setsid", base_env={})
        self.assertIn("/nonexistent/setsid not found", formatEvent(events[0]))
        d = runner.run(self.plugin, make_request(), 1.0)
        spawn = self.reactor.spawns[-1]
        self.assertEqual(spawn.executable, self.plugin.entrypoint)
        self.assertEqual(spawn.args, [self.plugin.entrypoint])
        self.reactor.advance(1.0)
        self.assertEqual(self.signals, [("kill", spawn.proto.transport.pid, signal.SIGTERM)])
        ended(spawn.proto, None, signal.SIGTERM)
        self.assertTrue(self.successResultOf(d).timed_out)

    def test_logs_never_hold_the_request(self) -> None:
        with capturedLogs() as events:
            d, proto = self.start(make_request(), timeout=1.0)
            self.reactor.advance(6.0)
            ended(proto, None, signal.SIGKILL)
        self.successResultOf(d)
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("plugin echo-py started: pid 4242", text)
        self.assertIn("timed out", text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn("greeting", text)

    def test_minimal_env(self) -> None:
        environ = {
            "PATH": "/opt/bin", "HOME": "/home/d", "TMPDIR": "/t", "AWS_SECRET": "x",
            "LANG": "fr_FR", "KEEP": "k",
        }
        self.assertEqual(
            minimal_env(environ, passthrough=["KEEP", "ABSENT"]),
            {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "HOME": "/home/d", "TMPDIR": "/t", "KEEP": "k"},
        )


# -- real processes ----------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether C{pid} is a live process (a zombie awaiting its reaper is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class RealProcessTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.plugins = fixture_plugins()
        self.runner = ProcessRunner(reactor, grace=0.5)
        self.addCleanup(self.runner.shutdown, 0.1)

    async def run_plugin(
        self, name: str, mode: str = "ok", timeout: float = 5.0, runner: ProcessRunner | None = None,
        **payload: Any,
    ) -> RunOutcome:
        request = make_request(mode, **payload)
        return await (runner or self.runner).run(self.plugins[name], request, timeout)

    async def wait_for_file(self, path: str, limit: float = 5.0) -> list[int]:
        waited = 0.0
        while not os.path.exists(path):
            if waited > limit:
                self.fail(f"{path} never appeared")
            await task.deferLater(reactor, 0.02, lambda: None)
            waited += 0.02
        with open(path) as f:
            return [int(p) for p in f.read().split()]

    async def assertGone(self, pids: list[int]) -> None:
        # Killed grandchildren are reparented and reaped by init; allow it a moment.
        for _ in range(100):
            if not any(alive(p) for p in pids):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail(f"still alive: {[p for p in pids if alive(p)]}")

    async def test_python_round_trip(self) -> None:
        request = make_request("ok")
        outcome = await self.runner.run(self.plugins["echo-py"], request, 5.0)
        self.assertTrue(outcome.ok, outcome)
        self.assertEqual(outcome.exit_code, 0)
        response = outcome.response
        self.assertEqual(response.result, "handled poll")
        # The plugin saw exactly the request, secrets included (only via stdin).
        self.assertEqual(response.state_updates["request"], request)
        self.assertEqual(response.logs, ({"level": "info", "message": "hello"},))
        done, other = normalize_events(response, "echo-py", 1_767_000_000.0)
        self.assertEqual(done.type, "echo.done")
        self.assertEqual(done.source, "echo-py")
        self.assertEqual(done.payload, {"job_id": request["job_id"], "result": "handled poll"})
        self.assertEqual(done.timestamp, "2025-12-29T09:20:00Z")
        self.assertEqual(
            (other.payload, other.source, other.event_id, other.dedupe_key, other.timestamp),
            ({"result": "mine"}, "elsewhere", "e-1", "k1", "2026-01-02T03:04:05.5Z"),
        )
        self.assertGreater(outcome.duration, 0)

    async def test_large_request_arrives_whole(self) -> None:
        """A request far bigger than a pipe buffer is flushed before stdin closes."""
        request = make_request("ok", blob="x" * 1_000_000)
        outcome = await self.runner.run(self.plugins["echo-py"], request, 10.0)
        self.assertTrue(outcome.ok, outcome.error)
        self.assertEqual(outcome.response.state_updates["request"], request)

    async def test_sh_round_trip(self) -> None:
        outcome = await self.run_plugin("echo-sh")
        self.assertTrue(outcome.ok, outcome)
        self.assertEqual(outcome.response.result, "sh ok")
        [event] = normalize_events(outcome.response, "echo-sh", 0.0)
        self.assertEqual((event.type, event.source), ("sh.done", "echo-sh"))
        self.assertEqual(event.payload, {"shell": "sh", "result": "sh ok"})

    async def test_exit_78(self) -> None:
        outcome = await self.run_plugin("echo-py", "exit78")
        self.assertEqual(
            outcome.error, "plugin exited with code 78 (EX_CONFIG, not retried): missing api key"
        )
        self.assertFalse(outcome.retryable)
        self.assertEqual(outcome.exit_code, 78)

    async def test_nonzero_exit_with_ok(self) -> None:
        outcome = await self.run_plugin("echo-py", "nonzero_ok")
        self.assertTrue(outcome.ok)
        self.assertEqual(outcome.exit_code, 3)

    async def test_status_error_retry_false(self) -> None:
        outcome = await self.run_plugin("echo-py", "error_noretry")
        self.assertEqual((outcome.error, outcome.retryable), ("bad input", False))
        outcome = await self.run_plugin("echo-py", "error_retry")
        self.assertEqual((outcome.error, outcome.retryable), ("try later", True))

    async def test_garbage_stdout(self) -> None:
        outcome = await self.run_plugin("echo-py", "garbage")
        self.assertIn("invalid plugin response: plugin output is not valid JSON", outcome.error)
        self.assertTrue(outcome.retryable)
        self.assertEqual(outcome.stdout, "this is not json\n")
        outcome = await self.run_plugin("echo-py", "empty")
        self.assertEqual(
            outcome.error, "invalid plugin response: plugin produced no output on stdout (exit code 2)"
        )

    async def test_stderr_tail(self) -> None:
        runner = ProcessRunner(reactor, stderr_tail=100)
        outcome = await self.run_plugin("echo-py", "stderr", runner=runner)
        self.assertTrue(outcome.ok)
        self.assertEqual(len(outcome.stderr_tail), 100)
        self.assertTrue(outcome.stderr_tail.endswith("A" * 92 + "TAIL-END"))

    async def test_stdout_over_cap_is_killed(self) -> None:
        runner = ProcessRunner(reactor, stdout_cap=1000, grace=0.5)
        outcome = await self.run_plugin("echo-py", "bigout", timeout=10.0, runner=runner, size=5000)
        self.assertEqual(outcome.error, "stdout exceeded 1000 bytes")
        self.assertTrue(outcome.retryable)
        self.assertFalse(outcome.timed_out)
        self.assertEqual(outcome.signal, signal.SIGKILL)
        self.assertEqual(len(outcome.stdout), 1000)
        self.assertLess(outcome.duration, 5.0)

    async def check_hang(self, name: str, ignore_term: bool) -> None:
        pidfile = os.path.abspath(self.mktemp())
        outcome = await self.run_plugin(
            name, "hang", timeout=1.0, pidfile=pidfile, ignore_term=ignore_term
        )
        pids = await self.wait_for_file(pidfile, limit=0)
        self.assertEqual(len(pids), 2)
        self.assertTrue(outcome.timed_out)
        self.assertTrue(outcome.retryable)
        self.assertEqual(outcome.error, "plugin timed out after 1s")
        self.assertEqual(outcome.signal, signal.SIGKILL if ignore_term else signal.SIGTERM)
        # Ended promptly: timeout + grace, not when the grandchild's sleep ends.
        self.assertLess(outcome.duration, 1.0 + 0.5 + 1.0)
        await self.assertGone(pids)

    async def test_timeout_kills_grandchild_python(self) -> None:
        await self.check_hang("echo-py", ignore_term=False)

    async def test_timeout_sigkill_after_grace(self) -> None:
        """Plugin and grandchild ignore SIGTERM: SIGKILL after the grace period."""
        await self.check_hang("echo-py", ignore_term=True)

    async def test_timeout_kills_grandchild_sh(self) -> None:
        await self.check_hang("echo-sh", ignore_term=False)

    async def test_timeout_on_a_clock(self) -> None:
        """Timers run on the injected clock: nothing happens until it advances."""
        clock = task.Clock()
        runner = ProcessRunner(reactor, clock=clock, grace=0.5)
        pidfile = os.path.abspath(self.mktemp())
        d = runner.run(self.plugins["echo-py"], make_request("hang", pidfile=pidfile), 30.0)
        pids = await self.wait_for_file(pidfile)
        self.assertTrue(all(alive(p) for p in pids))
        self.assertNoResult(d)
        clock.advance(30.0)
        outcome = await d
        self.assertTrue(outcome.timed_out)
        self.assertEqual(outcome.duration, 30.0)
        await self.assertGone(pids)

    async def test_env_does_not_leak(self) -> None:
        name = "DUCTILE_TEST_LEAK_" + uuid.uuid4().hex
        os.environ[name] = SECRET
        self.addCleanup(os.environ.pop, name, None)
        runner = ProcessRunner(reactor)  # default env, built while the variable is set
        outcome = await self.run_plugin("echo-py", "env", runner=runner)
        env = outcome.response.state_updates["env"]
        self.assertNotIn(name, env)
        self.assertNotIn(SECRET, json.dumps(env))
        self.assertEqual(env["PATH"], "/usr/bin:/bin")
        self.assertEqual(env["LC_ALL"], "C.UTF-8")
        self.assertEqual(env["DUCTILE_PLUGIN_DIR"], self.plugins["echo-py"].directory)
        self.assertLessEqual(
            set(env) - {"PWD", "SHLVL", "_"},  # set by env(1)/shells, not by us
            {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "TZ", "DUCTILE_PLUGIN_DIR"},
        )
        # The working directory is inherited from the daemon.
        self.assertEqual(outcome.response.state_updates["cwd"], os.getcwd())

    async def test_shutdown_terminates_running_plugins(self) -> None:
        pidfiles = [os.path.abspath(self.mktemp()) for _ in range(2)]
        runs = [
            self.runner.run(self.plugins["echo-py"], make_request("hang", pidfile=pidfiles[0]), 30.0),
            self.runner.run(self.plugins["echo-sh"], make_request("hang", pidfile=pidfiles[1]), 30.0),
        ]
        pids = [p for f in pidfiles for p in await self.wait_for_file(f)]
        self.assertEqual(self.runner.running, 2)
        await self.runner.shutdown(0.5)
        self.assertEqual(self.runner.running, 0)
        for d in runs:
            outcome = self.successResultOf(d)
            self.assertEqual(outcome.error, "plugin terminated: runner shutting down")
            self.assertTrue(outcome.retryable)
        await self.assertGone(pids)
        refused = await self.run_plugin("echo-py")
        self.assertEqual(refused.error, "plugin runner is shutting down")

    async def test_concurrent_runs(self) -> None:
        outcomes = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self.run_plugin(n)) for n in ["echo-py", "echo-sh"] * 3]
        )
        self.assertTrue(all(o.ok for o in outcomes), outcomes)


class SessionLeaderTests(TestCase):
    """Plugins lead their own session and process group, with or without the setsid program."""

    timeout = 20

    def _plugin(self) -> Any:
        import sys

        from ductile.plugins.manifest import parse_manifest

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        entry = os.path.join(base, "run.py")
        with open(entry, "w") as f:
            f.write(f"#!{sys.executable} -I\n"
                    "import json, os, sys\nsys.stdin.read()\n"
                    "print(json.dumps({'status': 'ok', 'result': [os.getpid(), os.getpgid(0), os.getsid(0)]}))\n")
        os.chmod(entry, 0o755)
        with open(os.path.join(base, "manifest.yaml"), "w") as f:
            f.write("manifest_spec: ductile.plugin\nmanifest_version: 1\nname: whoami\nversion: '1'\n"
                    "protocol: 2\nentrypoint: run.py\ncommands: [{name: poll}]\n")
        return parse_manifest(open(os.path.join(base, "manifest.yaml")).read(), os.path.join(base, "manifest.yaml"))

    async def _ids(self, runner: Any) -> list[int]:
        outcome = await runner.run(self._plugin(), {"job_id": "j", "command": "poll"}, 10)
        self.assertIsNone(outcome.error)
        return outcome.response.result

    async def test_direct_spawn_leads_a_session(self) -> None:
        from twisted.internet import reactor

        runner = ProcessRunner(reactor, direct_session=True)
        pid, pgid, sid = await self._ids(runner)
        self.assertEqual((pgid, sid), (pid, pid))
        self.assertNotEqual(pgid, os.getpgid(0))

    async def test_setsid_program_fallback_leads_a_session(self) -> None:
        from twisted.internet import reactor

        runner = ProcessRunner(reactor, direct_session=False)
        pid, pgid, sid = await self._ids(runner)
        self.assertEqual((pgid, sid), (pid, pid))
