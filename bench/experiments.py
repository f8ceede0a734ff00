"""
Library changes the bench recommends, applied as monkeypatches so their
effect can be measured before the library is changed (C{--experiment NAME}
on servers.py, fig_pipeline.py and fig_queue.py).  Never used by default.

- C{batch-callbacks}: L{GroupCommitWriter._delivered} fires the batch's
  callbacks while still marked busy, so writes submitted from those
  callbacks (the next enqueue of a waiting caller, the next claim after a
  completion) join one next batch instead of the first of them being
  committed alone (batches alternate 1, N-1 today).
- C{deferred-flush}: see L{deferred_flush}.
- C{relay-pool}: see L{relay_pool}.
"""
from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure


def batch_callbacks() -> None:
    from ductile.errors import StorageUnavailable
    from ductile.store import writer as w

    def _delivered(self: Any, outcome: Any, batch: list[Any]) -> None:
        if isinstance(outcome, Failure):
            err = w.storage_failure(outcome.value)
            if not isinstance(err, StorageUnavailable):
                self.log.failure("group commit failed", outcome)
            for p in batch:
                p.deferred.errback(Failure(err) if err is not outcome.value else outcome)
        else:
            for p, (ok, value) in zip(batch, outcome):
                if ok:
                    p.deferred.callback(value)
                else:
                    p.deferred.errback(value)
        self._busy = False
        if self._pending:
            self._flush()

    w.GroupCommitWriter._delivered = _delivered


def deferred_flush() -> None:
    """
    A write arriving while the writer is idle is committed at the end of the
    current reactor iteration (C{callLater(0)}) instead of at once, so the
    requests read in the same iteration share one transaction.
    """
    from twisted.internet import reactor

    from ductile.store import writer as w

    def submit(self: Any, write: Any) -> Any:
        from twisted.internet import defer

        d = defer.Deferred()
        self._pending.append(w._Pending(write, d))
        if not self._busy and not getattr(self, "_scheduled", False):
            self._scheduled = True
            reactor.callLater(0, _flush_now, self)
        return d

    def _flush_now(self: Any) -> None:
        self._scheduled = False
        if not self._busy and self._pending:
            self._flush()

    w.GroupCommitWriter.submit = submit


def relay_pool() -> None:
    """
    The relay sender keeps up to 32 idle connections per receiver (it keeps
    4 today), so 32 concurrent deliveries stop opening a new TCP
    connection for most requests.
    """
    from ductile.relay import sender as s

    init = s.RelaySender.__init__

    def __init__(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        self._pool.maxPersistentPerHost = 32

    s.RelaySender.__init__ = __init__


EXPERIMENTS = {"relay-pool": relay_pool, "batch-callbacks": batch_callbacks, "deferred-flush": deferred_flush}


def apply(argv: list[str]) -> None:
    """Apply every C{--experiment NAME} in C{argv}."""
    for i, arg in enumerate(argv):
        if arg == "--experiment":
            EXPERIMENTS[argv[i + 1]]()
