"""
Adaptive group commit over the single writer connection.

A write arriving while the writer is idle is committed as soon as the
current reactor iteration ends (with whatever else that iteration wrote);
writes that arrive while a commit is in progress wait and are committed
together in the next transaction.  There is no fixed waiting window, so a lone request pays
one commit and a burst shares one fsync (measured: the difference between
~0.3x and ~0.7x of bare twisted.web throughput on the project's machine).

Writes of one kind can be coalesced (L{WriteGroup}): every item a batch
holds for a group runs as one call, so a burst of enqueues becomes a few
multi-row statements instead of a few statements per job.  That matters
because each C{execute} releases the GIL and must win it back from the busy
reactor thread (measured: ~100 us per statement under ingress load, against
~10 us of SQLite work).

A write that raises is rolled back alone (the batch is rerun with a
SAVEPOINT per write) and only its caller sees the error.  Every caller's Deferred fires
only after the COMMIT that holds its rows has returned.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable, Protocol, Sequence, TypeVar

import attrs
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ductile.errors import StorageUnavailable

T = TypeVar("T")
Item = TypeVar("Item", contravariant=True)
Write = Callable[[Any], T]


class WriteGroup(Protocol[Item]):
    """
    Writes that can run together: C{run(txn, items)} does the work of every
    item in one go (in the database thread) and returns one result per item,
    in order.  It may raise; the batch is then rerun with each item alone.
    """

    def run(self, txn: Any, items: Sequence[Item]) -> list[Any]:
        ...

    def run_alone(self, txn: Any, items: Sequence[Item]) -> list[Any] | None:
        """
        Called instead of L{run} when these items are the whole batch, with
        no transaction open: do them as one atomic statement (its own
        transaction), or return C{None} having written nothing, and L{run}
        is used inside the usual transaction.  An exception means nothing
        was written (the batch is rerun), unless it is L{AlreadyWritten}.
        """
        ...


class AlreadyWritten(Exception):
    """
    Raised (from the real error) by a L{WriteGroup.run_alone} that failed
    after its statement committed: the batch fails without a rerun, which
    would write the rows a second time.
    """

_STORAGE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)


def storage_failure(exc: BaseException) -> BaseException:
    """
    Map SQLite's own errors (locked, read-only, disk full, I/O) to
    L{StorageUnavailable}; leave programming errors alone.
    """
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return exc
    if isinstance(exc, _STORAGE_ERRORS):
        return StorageUnavailable(str(exc))
    return exc


@attrs.define
class _Pending:
    write: Write[Any] | None
    deferred: defer.Deferred[Any]
    group: WriteGroup[Any] | None = None
    item: Any = None


@attrs.frozen
class _Unit:
    """
    What the database thread runs for a batch: one plain write, or every
    item of one group (at the position of the group's first item).
    """

    pending: tuple[_Pending, ...]

    def run(self, txn: Any) -> list[Any]:
        first = self.pending[0]
        if first.group is None:
            assert first.write is not None
            return [first.write(txn)]
        return self._checked(first.group.run(txn, [p.item for p in self.pending]))

    def run_alone(self, txn: Any) -> list[Any] | None:
        first = self.pending[0]
        if first.group is None:
            return None
        results = first.group.run_alone(txn, [p.item for p in self.pending])
        return None if results is None else self._checked(results)

    def _checked(self, results: list[Any]) -> list[Any]:
        if len(results) != len(self.pending):
            raise RuntimeError(f"{self.pending[0].group!r} returned {len(results)} results for {len(self.pending)} items")
        return results

    def singles(self) -> list["_Unit"]:
        return [_Unit((p,)) for p in self.pending]


def _units(batch: list[_Pending]) -> list[_Unit]:
    units: list[list[_Pending]] = []
    by_group: dict[int, list[_Pending]] = {}
    for p in batch:
        if p.group is None:
            units.append([p])
            continue
        members = by_group.get(id(p.group))
        if members is None:
            members = by_group[id(p.group)] = []
            units.append(members)
        members.append(p)
    return [_Unit(tuple(members)) for members in units]


@attrs.define
class BatchStats:
    """How many transactions and writes went through; read by metrics."""

    transactions: int = 0
    writes: int = 0
    largest_batch: int = 0


class GroupCommitWriter:
    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, reactor: IReactorTime | None = None) -> None:
        """
        @param reactor: where to schedule the flush at the end of the current
            reactor iteration; the pool's own reactor by default.
        """
        self._pool = pool
        self._reactor: IReactorTime = reactor if reactor is not None else pool._reactor
        self._pending: list[_Pending] = []
        self._busy = False
        self._scheduled: Any = None
        self.stats = BatchStats()

    def submit(self, write: Write[T]) -> defer.Deferred[T]:
        """
        Run C{write(cursor)} in the next transaction; fire with its return
        value once that transaction is durable.
        """
        return self._add(_Pending(write, defer.Deferred()))

    def submit_to(self, group: WriteGroup[Any], item: Any) -> defer.Deferred[Any]:
        """
        Like L{submit}, but C{item} runs together with every other item the
        same batch holds for C{group} (see L{WriteGroup}); fire with its own
        result once the transaction is durable.
        """
        return self._add(_Pending(None, defer.Deferred(), group, item))

    def _add(self, pending: _Pending) -> defer.Deferred[Any]:
        self._pending.append(pending)
        if not self._busy and self._scheduled is None:
            # Flush once the current reactor iteration is done, so writes
            # made in the same iteration (a job's completion and the
            # dispatcher's next claim; requests read in one poll) share a
            # commit.  No timer window: it runs as soon as the reactor is free.
            self._scheduled = self._reactor.callLater(0, self._flush)
        return pending.deferred

    def _flush(self) -> None:
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        batch, self._pending = self._pending, []
        self._busy = True
        self.stats.transactions += 1
        self.stats.writes += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        units = _units(batch)
        d = self._pool.runInteraction(_run_batch, units)
        d.addBoth(self._delivered, [p for unit in units for p in unit.pending])

    def _delivered(self, outcome: Any, batch: list[_Pending]) -> None:
        # Callers are answered while the writer still counts as busy: what
        # they submit from their callbacks (the dispatcher's next claim, a
        # pipeline's next step) joins the next batch instead of committing
        # alone ahead of it.
        if isinstance(outcome, Failure):
            err = storage_failure(outcome.value)
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
        if self._pending and self._scheduled is None:
            self._flush()

    def idle(self) -> bool:
        return not self._busy and not self._pending and self._scheduled is None


def _run_batch(txn: Any, units: list[_Unit]) -> list[tuple[bool, Any]]:
    """
    Run every write in one transaction; one result per pending write, in
    the units' order.  The common case — nothing raises — costs no
    savepoints; if a write raises, the batch is rolled back and run again
    with one savepoint per write (group items alone), so only the failing
    write is lost.
    """
    if len(units) == 1:
        try:
            alone = units[0].run_alone(txn)
        except AlreadyWritten as e:
            # Every caller fails (their rows may be in): never written twice.
            raise (e.__cause__ or e) from None
        except Exception:
            alone = None  # atomic: nothing was written; rerun item by item below
        else:
            if alone is not None:
                return [(True, value) for value in alone]
    txn.execute("BEGIN IMMEDIATE")
    try:
        return [(True, value) for unit in units for value in unit.run(txn)]
    except Exception:
        txn.execute("ROLLBACK")
    txn.execute("BEGIN IMMEDIATE")
    results: list[tuple[bool, Any]] = []
    for single in (single for unit in units for single in unit.singles()):
        txn.execute("SAVEPOINT w")
        try:
            (value,) = single.run(txn)
        except Exception as e:
            txn.execute("ROLLBACK TO w")
            txn.execute("RELEASE w")
            results.append((False, Failure(storage_failure(e))))
        else:
            txn.execute("RELEASE w")
            results.append((True, value))
    # adbapi commits when this returns (and rolls back if the commit raises).
    return results
