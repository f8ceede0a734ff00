"""
Spawning a plugin as a session leader: the ignored signals it gets back at
their defaults are read correctly, and no descriptor of the daemon's but
its stdin, stdout and stderr reaches it.
"""
from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.plugins import spawn
from ductile.plugins.runner import ProcessRunner
from ductile.plugins.spawn import _ignored_signals


class IgnoredSignalsTests(SynchronousTestCase):
    def test_matches_signal_module(self) -> None:
        """The fast read gives exactly the signals signal.getsignal reports as ignored."""
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGUSR2, previous)
        expected = [s for s in range(1, signal.NSIG) if signal.getsignal(s) == signal.SIG_IGN]
        self.assertIn(signal.SIGUSR2, expected)
        self.assertEqual(_ignored_signals(), expected)

    def test_handled_signal_not_listed(self) -> None:
        """A signal with a handler is not reset (the child's exec resets handlers itself)."""
        previous = signal.signal(signal.SIGUSR2, lambda *a: None)
        self.addCleanup(signal.signal, signal.SIGUSR2, previous)
        self.assertNotIn(signal.SIGUSR2, _ignored_signals())


FD_PLUGIN = """#!{python}
import json, os, sys
sys.stdin.read()
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
sys.stdout.write(json.dumps({{"status": "ok", "result": {{"fds": fds, "pgid": os.getpgid(0), "pid": os.getpid()}}}}))
"""

MANIFEST = """manifest_spec: ductile.plugin
manifest_version: 1
name: fds
version: 1.0.0
protocol: 2
entrypoint: run.py
commands:
  - name: poll
    type: write
"""


class RealSpawnTests(TestCase):
    """A real plugin process, spawned as a session leader on the real reactor."""

    timeout = 20

    def setUp(self) -> None:
        import sys

        from ductile.plugins.discovery import discover

        root = os.path.abspath(self.mktemp())
        directory = os.path.join(root, "fds")
        os.makedirs(directory)
        with open(os.path.join(directory, "manifest.yaml"), "w") as f:
            f.write(MANIFEST)
        entry = os.path.join(directory, "run.py")
        with open(entry, "w") as f:
            f.write(FD_PLUGIN.format(python=sys.executable))
        os.chmod(entry, 0o755)
        found = discover([root])
        self.assertEqual(list(found.problems), [])
        self.plugin = dict(found.plugins)["fds"]
        from twisted.internet import reactor

        self.runner = ProcessRunner(reactor, grace=0.5)
        self.addCleanup(self.runner.shutdown, 0.1)

    async def test_missing_or_not_executable_entrypoint_named(self) -> None:
        """
        On the posix_spawn path the entrypoint is not checked before each
        run; a failed spawn still names the problem in the operator's words.
        """
        import attrs

        from ductile.plugins.protocol import build_request

        self.assertTrue(self.runner._direct_session)
        request = build_request(job_id="j", command="poll", config={}, state={}, payload={}, context={},
                                deadline_at="2030-01-01T00:00:00Z")
        missing = attrs.evolve(self.plugin, entrypoint=self.plugin.entrypoint + ".gone")
        outcome = await self.runner.run(missing, request, 5.0)
        self.assertEqual(outcome.error, f"cannot run plugin: entrypoint not found: {missing.entrypoint}")
        self.assertTrue(outcome.retryable)
        os.chmod(self.plugin.entrypoint, 0o644)
        outcome = await self.runner.run(self.plugin, request, 5.0)
        self.assertEqual(outcome.error,
                         f"cannot run plugin: entrypoint is not executable: {self.plugin.entrypoint}")
        self.assertEqual(self.runner.running, 0)

    async def test_only_stdio_reaches_the_plugin(self) -> None:
        """
        A descriptor the daemon left inheritable does not leak into the
        plugin: it gets exactly 0, 1 and 2 (plus the one its listdir opens),
        and leads its own process group.
        """
        from tests.test_plugins_runner import make_request

        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        outcome = await self.runner.run(self.plugin, make_request(), 10.0)
        self.assertTrue(outcome.ok, outcome)
        result = outcome.response.result
        self.assertEqual(result["fds"][:3], [0, 1, 2])
        self.assertLessEqual(len(result["fds"]), 4)
        self.assertNotIn(r, result["fds"][3:])
        self.assertNotIn(w, result["fds"][3:])
        self.assertEqual(result["pgid"], result["pid"])
        # Still usable in the daemon.
        os.write(w, b"x")
        self.assertEqual(os.read(r, 1), b"x")

    async def test_fallback_lists_descriptors(self) -> None:
        """Without close_range the descriptors are listed and closed in the child, as Twisted does."""
        from tests.test_plugins_runner import make_request

        self.patch(spawn, "_close_range", False)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        os.set_inheritable(r, True)
        outcome = await self.runner.run(self.plugin, make_request(), 10.0)
        self.assertTrue(outcome.ok, outcome)
        self.assertEqual(outcome.response.result["fds"][:3], [0, 1, 2])
        self.assertNotIn(r, outcome.response.result["fds"][3:])
        self.assertTrue(os.get_inheritable(r))  # the fallback does not touch the daemon's flags
