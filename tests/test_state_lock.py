"""
One instance per state database.
"""
from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from ductile.store.lock import StateLock, StateLocked


class StateLockTests(SynchronousTestCase):
    def test_second_holder_refused_with_pid(self) -> None:
        """A second process cannot take the lock; the message names the holder's pid and the database."""
        db = os.path.join(os.path.abspath(self.mktemp()), "state.db")
        lock = StateLock(db)
        lock.acquire()
        self.addCleanup(lock.release)
        code = (
            "import sys\n"
            "from ductile.store.lock import StateLock, StateLocked\n"
            "try:\n    StateLock(sys.argv[1]).acquire()\n"
            "except StateLocked as e:\n    print(e); sys.exit(3)\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, PYTHONPATH=root))
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertIn(f"pid {os.getpid()}", out.stdout)
        self.assertIn(db, out.stdout)

    def test_release_lets_another_take_it(self) -> None:
        db = os.path.join(os.path.abspath(self.mktemp()), "state.db")
        first = StateLock(db)
        first.acquire()
        first.release()
        second = StateLock(db)
        second.acquire()
        self.assertTrue(second.held)
        second.release()
        self.assertFalse(second.held)

    def test_same_process_second_lock_refused(self) -> None:
        """flock is per open file: even in one process a second instance is refused."""
        db = os.path.join(os.path.abspath(self.mktemp()), "state.db")
        first = StateLock(db)
        first.acquire()
        self.addCleanup(first.release)
        self.assertRaises(StateLocked, StateLock(db).acquire)
