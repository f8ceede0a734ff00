"""
Spawning a plugin as a session leader: the ignored signals it gets back at
their defaults are read correctly.
"""
from __future__ import annotations

import signal

from twisted.trial.unittest import SynchronousTestCase

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
