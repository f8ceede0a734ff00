"""
A real, file-backed state database for tests.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ductile.queue import JobQueue
from ductile.store.pool import open_pool, prepare_database
from ductile.store.writer import GroupCommitWriter


def make_queue(testcase: Any, clock: IReactorTime, dedupe_ttl: float = 86400.0, path: str | None = None):
    """
    A L{JobQueue} on a fresh SQLite file under the test's temp dir; the pool
    is closed at cleanup.  Returns C{(queue, pool, path)}.
    """
    if path is None:
        base = testcase.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "state.db")
    prepare_database(path)
    pool = open_pool(path)
    testcase.addCleanup(lambda: pool.close() if pool.running else None)
    writer = GroupCommitWriter(pool)
    return JobQueue(pool, writer, clock, dedupe_ttl=dedupe_ttl), pool, path
