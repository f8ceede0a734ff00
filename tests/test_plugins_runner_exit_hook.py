"""
The runner's exit hook: the dispatcher learns that a plugin's process has
ended before its output is parsed, so the next job can start at once.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ductile.plugins.runner import ProcessRunner
from tests.test_plugins_runner import FakeProcessReactor, ended, fixture_plugins, make_request


class ExitHookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.plugin = fixture_plugins()["echo-py"]
        self.reactor = FakeProcessReactor()
        self.patch(os, "killpg", lambda pid, sig: None)
        self.patch(os, "kill", lambda pid, sig: None)
        self.runner = ProcessRunner(self.reactor, base_env={"PATH": "/usr/bin:/bin"}, grace=5.0)
        self.calls: list[Any] = []

    def hook(self) -> None:
        # What the runner has decided by the time the hook runs.
        self.calls.append(("exit", self.runner.running, self.d.called))

    def test_called_once_after_the_end_before_the_outcome(self) -> None:
        """The hook runs once the process has ended, before the run's Deferred fires."""
        self.d = self.runner.run(self.plugin, make_request(), 60.0, on_exit=self.hook)
        proto = self.reactor.spawns[-1].proto
        proto.outReceived(b'{"status":"ok","result":"done"}')
        proto.processExited(None)  # exited, but its output may still be held open
        self.assertEqual(self.calls, [])
        ended(proto)
        self.assertEqual(self.calls, [("exit", 0, False)])
        self.assertTrue(self.successResultOf(self.d).ok)
        self.assertEqual(len(self.calls), 1)

    def test_called_after_a_timeout_kill(self) -> None:
        """A plugin stopped for its timeout also hands its worker on when it ends."""
        self.d = self.runner.run(self.plugin, make_request(), 1.0, on_exit=self.hook)
        proto = self.reactor.spawns[-1].proto
        self.reactor.advance(1.0)
        self.assertEqual(self.calls, [])
        ended(proto, code=None, sig=15)
        self.assertEqual(self.calls, [("exit", 0, False)])
        self.assertTrue(self.successResultOf(self.d).timed_out)

    def test_not_called_when_never_spawned(self) -> None:
        """A refused run (here: the runner is shutting down) never calls the hook."""
        self.runner.shutdown()
        self.d = self.runner.run(self.plugin, make_request(), 60.0, on_exit=self.hook)
        self.assertIn("shutting down", self.successResultOf(self.d).error)
        self.assertEqual(self.calls, [])

    def test_failing_hook_does_not_lose_the_outcome(self) -> None:
        """A hook that raises is logged; the run still ends with its outcome."""

        def broken() -> None:
            raise RuntimeError("hook broke")

        d = self.runner.run(self.plugin, make_request(), 60.0, on_exit=broken)
        proto = self.reactor.spawns[-1].proto
        proto.outReceived(b'{"status":"ok","result":"done"}')
        ended(proto)
        self.assertTrue(self.successResultOf(d).ok)
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(failure.value), "hook broke")
