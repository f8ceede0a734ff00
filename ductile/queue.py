"""
The durable job queue: every state change is one transaction through the
group-commit writer, so a caller's Deferred fires only when its rows are on
disk, and a finished job, its log, its plugin-state update and the jobs its
events route to are committed together or not at all.

Statuses and transitions follow contract §4.2; dedupe follows §4.4.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import attrs
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ductile.events import new_id
from ductile.store.schema import ENQUEUE_VIEW, ENQUEUE_VIEW_COLUMNS, duplicate_where
from ductile.store.writer import AlreadyWritten, GroupCommitWriter

T = TypeVar("T")

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
DEAD = "dead"
SKIPPED = "skipped"
TERMINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, DEAD, SKIPPED})
STATUSES = (QUEUED, RUNNING, SUCCEEDED, SKIPPED, FAILED, TIMED_OUT, DEAD)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


@attrs.frozen
class JobSpec:
    """A job to create.  C{error} set means: record it as already failed."""

    plugin: str
    command: str
    payload: Mapping[str, Any] = attrs.field(factory=dict)
    submitted_by: str = ""
    max_attempts: int = 4
    dedupe_key: str | None = None
    parent_job_id: str | None = None
    source_event_id: str | None = None
    context: Mapping[str, Any] | None = None
    context_parent_id: str | None = None
    pipeline: str | None = None
    step_id: str | None = None
    error: str | None = None


@attrs.frozen
class EnqueueResult:
    job_id: str | None
    deduplicated: bool = False
    #: A successor that already existed (the same completion committed twice).
    existing: bool = False


@attrs.frozen
class ClaimedJob:
    id: str
    plugin: str
    command: str
    payload: Mapping[str, Any]
    attempt: int
    max_attempts: int
    submitted_by: str
    dedupe_key: str | None
    context: Mapping[str, Any]
    context_id: str | None
    pipeline: str | None
    step_id: str | None
    parent_job_id: str | None
    #: The plugin's state as of the claim (read in the claim's transaction,
    #: so running a job costs no extra database round trip).
    state: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class RelayAttemptRecord:
    instance: str
    outcome: str
    status_code: int | None
    error: str
    duration: float


@attrs.frozen
class Completion:
    """
    How a claimed job's attempt ended.

    C{status} is C{queued} for "retry at C{next_retry_at}", otherwise the
    terminal status.
    """

    status: str
    error: str | None = None
    result: Any = None
    stdout: str | None = None
    stderr: str | None = None
    duration: float = 0.0
    next_retry_at: float | None = None
    state_updates: Mapping[str, Any] | None = None
    successors: Sequence[JobSpec] = ()
    relay_attempt: RelayAttemptRecord | None = None
    #: False when the attempt was cut short by our own shutdown: it is
    #: requeued as the same attempt, at once.
    count_attempt: bool = True


class JobQueue:
    log = Logger()

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        writer: GroupCommitWriter,
        clock: IReactorTime,
        dedupe_ttl: float = 86400.0,
    ) -> None:
        self._pool = pool
        self._writer = writer
        self._clock = clock
        self.dedupe_ttl = dedupe_ttl
        self._listeners: list[Callable[[], None]] = []
        self._completing: list[Callable[[ClaimedJob], None]] = []
        self._ending: list[Callable[[ClaimedJob], None]] = []
        self._waiters: list[defer.Deferred[None]] = []
        #: False once we know no job waits for a future retry; set again by
        #: any completion that schedules one.  Lets the dispatcher skip the
        #: next_due read (which queues behind writes) after every claim.
        self.retries_may_be_pending = True
        self._retry_generation = 0
        self._enqueues = _Enqueues(self)

    def on_new_work(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener()} after any commit that may have made a job
        claimable (enqueue, retry scheduled, successors, recovery, replay):
        the dispatcher starts work when it becomes possible, not on a tick.
        """
        self._listeners.append(listener)

    def on_completing(self, listener: Callable[[ClaimedJob], None]) -> None:
        """
        Call C{listener(job)} as soon as C{job}'s completion is submitted,
        before it commits: the dispatcher hands the slot to the next job then,
        so its claim joins the completion's transaction (one commit per job).
        """
        self._completing.append(listener)

    def on_ending(self, listener: Callable[[ClaimedJob], None]) -> None:
        """
        Call C{listener(job)} when C{job}'s plugin process has ended and its
        completion is about to be worked out (L{ending}): its worker may start
        the next job at once.
        """
        self._ending.append(listener)

    def ending(self, job: ClaimedJob) -> None:
        """
        C{job}'s attempt no longer holds a process; its L{complete} follows.
        Writes nothing: only tells the C{on_ending} listeners.
        """
        for listener in self._ending:
            listener(job)

    def changed(self) -> defer.Deferred[None]:
        """Fire once, after the next commit that may have moved any job."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def _notify(self, result: T) -> T:
        for listener in self._listeners:
            listener()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)
        return result

    # -- writes ---------------------------------------------------------

    def enqueue(self, specs: Sequence[JobSpec]) -> defer.Deferred[list[EnqueueResult]]:
        """Create all C{specs} in one transaction (with dedupe)."""
        now = self._clock.seconds()
        return self._writer.submit_to(self._enqueues, (tuple(specs), now)).addCallback(self._notify)

    def claim(
        self, limit: int, plugin_slots: Mapping[str, int] | None = None, default_slots: int | None = None
    ) -> defer.Deferred[list[ClaimedJob]]:
        """
        Move up to C{limit} due jobs to C{running}, oldest first, respecting
        per-plugin free slots (C{plugin_slots[name]}, else C{default_slots}).
        A job whose dedupe key is already running for the same target waits.

        A claimed job is C{running} with C{started_at} NULL: claimed, not yet
        started.  Until L{started} records its start, crash recovery puts it
        back as the same attempt (the dispatcher claims ahead of free workers,
        so a claimed job may wait for one).
        """
        now = self._clock.seconds()
        slots = dict(plugin_slots or {})
        return self._writer.submit(lambda txn: self._claim(txn, limit, slots, default_slots, now))

    def complete(self, job: ClaimedJob, completion: Completion) -> defer.Deferred[list[EnqueueResult]]:
        """Record the end of C{job}'s attempt and create its successors, atomically."""
        now = self._clock.seconds()
        d = self._writer.submit(lambda txn: self._complete(txn, job, completion, now))
        for listener in self._completing:
            listener(job)
        if completion.next_retry_at is not None:
            # Before and after the commit: a next_due read that ran in
            # between must not conclude that no retry is pending.
            self._retry_scheduled()
            d.addCallback(lambda result: (self._retry_scheduled(), result)[1])
        return d.addCallback(self._notify)

    def _retry_scheduled(self) -> None:
        self.retries_may_be_pending = True
        self._retry_generation += 1

    def started(self, jobs: Sequence[ClaimedJob]) -> defer.Deferred[None]:
        """
        Record that C{jobs}' attempts have begun (their C{started_at}), so
        crash recovery counts them.  The caller does not wait for it: it rides
        in the next group commit, and until then a crash requeues the job as
        the same attempt (it runs again; the attempt is not counted).
        """
        now = self._clock.seconds()

        def mark(txn: Any) -> None:
            for job in jobs:
                txn.execute(
                    "UPDATE job_queue SET started_at=? WHERE id=? AND status='running' AND attempt=?",
                    (now, job.id, job.attempt),
                )

        return self._writer.submit(mark)

    def release(self, jobs: Sequence[ClaimedJob]) -> defer.Deferred[None]:
        """
        Put claimed jobs that were never started back in the queue, as the
        same attempt (a claim that returned while the service was stopping).
        """
        now = self._clock.seconds()

        def release(txn: Any) -> None:
            for job in jobs:
                txn.execute(
                    "UPDATE job_queue SET status='queued', started_at=NULL WHERE id=? AND status='running'",
                    (job.id,),
                )
                _transition(txn, job.id, RUNNING, QUEUED, "released: service stopping", now)

        return self._writer.submit(release)

    def recover(
        self, hooks: Callable[[Any, str, float], Sequence[JobSpec]] | None = None
    ) -> defer.Deferred[list[tuple[str, str, str]]]:
        """
        Crash recovery (contract §4.5): jobs left C{running} go back to
        C{queued} at once with the next attempt, or C{dead} when out of
        attempts.  A job claimed but never started (C{started_at} NULL, see
        L{claim}) goes back to C{queued} as the same attempt: it never ran, or
        ran for less than the one commit that would have recorded its start.
        Returns C{(job_id, plugin, new_status)} for each.
        C{hooks(txn, job_id, now)} (L{ductile.hooks.RecoveryHooks}) gives the
        jobs a dead one fires; they are created in the same transaction.
        """
        now = self._clock.seconds()
        return self._writer.submit(lambda txn: self._recover(txn, now, hooks)).addCallback(self._notify)

    def replay(self, job_id: str, submitted_by: str = "replay") -> defer.Deferred[str]:
        """
        Enqueue a fresh copy of a finished job (same plugin, payload, dedupe
        key and context): what C{relay replay} uses for a dead delivery.
        """
        now = self._clock.seconds()
        return self._writer.submit(lambda txn: self._replay(txn, job_id, submitted_by, now)).addCallback(
            self._notify
        )

    def prune(self, queue_retention: float, log_retention: float) -> defer.Deferred[dict[str, int]]:
        """
        Delete what retention no longer needs, so claim and dedupe stay flat:
        succeeded/skipped jobs after C{queue_retention} (never sooner than
        the dedupe window, which reads them), failed/timed-out/dead jobs —
        the ones an operator replays — and all history after C{log_retention}.
        """
        now = self._clock.seconds()
        done_cutoff = now - max(queue_retention, self.dedupe_ttl)
        history_cutoff = now - log_retention

        def prune(txn: Any) -> dict[str, int]:
            counts = {}
            txn.execute(
                "DELETE FROM job_queue WHERE status IN ('succeeded','skipped') AND completed_at<?", (done_cutoff,)
            )
            counts["jobs"] = txn.rowcount
            txn.execute(
                "DELETE FROM job_queue WHERE status IN ('failed','timed_out','dead') AND completed_at<?",
                (history_cutoff,),
            )
            counts["jobs"] += txn.rowcount
            for table in ("job_log", "job_transitions", "relay_attempts", "event_context"):
                txn.execute(f"DELETE FROM {table} WHERE created_at<?", (history_cutoff,))
                counts[table] = txn.rowcount
            return counts

        return self._writer.submit(prune)

    # -- reads ----------------------------------------------------------

    def next_due(self) -> defer.Deferred[float | None]:
        """When the earliest future retry becomes due (epoch seconds), if any."""

        now = self._clock.seconds()

        def q(txn: Any) -> float | None:
            # Only future retries: a due job not claimed yet is waiting for a
            # worker slot, and a finishing worker will claim it.
            txn.execute(
                "SELECT MIN(next_retry_at) FROM job_queue WHERE status='queued' AND next_retry_at>?", (now,)
            )
            row = txn.fetchone()
            return row[0] if row else None

        generation = self._retry_generation

        def remember(at: float | None) -> float | None:
            # A retry scheduled while this read was in flight may not be in it.
            if at is None and generation == self._retry_generation:
                self.retries_may_be_pending = False
            return at

        return self._pool.runInteraction(q).addCallback(remember)

    def get_job(self, job_id: str) -> defer.Deferred[dict[str, Any] | None]:
        return self._pool.runInteraction(lambda txn: fetch_job(txn, job_id))

    def list_jobs(self, **filters: Any) -> defer.Deferred[list[dict[str, Any]]]:
        return self._pool.runInteraction(lambda txn: list_jobs(txn, **filters))

    def job_tree(self, job_id: str) -> defer.Deferred[list[dict[str, Any]]]:
        """The job and all its descendants (by C{parent_job_id}), parents first."""
        return self._pool.runInteraction(lambda txn: job_tree(txn, job_id))

    def relay_attempts(self, job_id: str) -> defer.Deferred[list[dict[str, Any]]]:
        return self._pool.runInteraction(lambda txn: relay_attempts(txn, job_id))

    def oldest_queued_age(self) -> defer.Deferred[float | None]:
        now = self._clock.seconds()

        def q(txn: Any) -> float | None:
            txn.execute("SELECT MIN(created_at) FROM job_queue WHERE status='queued'")
            row = txn.fetchone()
            return None if row is None or row[0] is None else max(0.0, now - row[0])

        return self._pool.runInteraction(q)

    @property
    def writer_stats(self) -> Any:
        return self._writer.stats

    def counts(self) -> defer.Deferred[dict[str, int]]:
        def q(txn: Any) -> dict[str, int]:
            txn.execute("SELECT status, COUNT(*) FROM job_queue GROUP BY status")
            return {status: n for status, n in txn.fetchall()}

        return self._pool.runInteraction(q)

    def plugin_state(self, plugin: str) -> defer.Deferred[dict[str, Any]]:
        def q(txn: Any) -> dict[str, Any]:
            txn.execute("SELECT state FROM plugin_state WHERE plugin_name=?", (plugin,))
            row = txn.fetchone()
            return json.loads(row[0]) if row else {}

        return self._pool.runInteraction(q)

    # -- transaction bodies (run in the pool thread) ----------------------

    def _find_duplicate(self, txn: Any, spec: JobSpec, now: float) -> str | None:
        txn.execute(
            "SELECT id FROM job_queue q WHERE " + _DUPLICATE_WHERE + " ORDER BY created_at LIMIT 1",
            (spec.dedupe_key, spec.plugin, spec.command, now - self.dedupe_ttl),
        )
        row = txn.fetchone()
        return row[0] if row else None

    def _insert(self, txn: Any, spec: JobSpec, now: float, parent: str | None = None) -> EnqueueResult:
        """
        Insert one job (and its context).  Every C{execute} here hands the
        GIL back and forth with the reactor thread, so the common path is
        kept to as few statements as it can be: the dedupe check rides on the
        INSERT itself, and the "enqueued" transition is written by a trigger.
        """
        parent_job_id = parent or spec.parent_job_id
        if parent_job_id and spec.source_event_id:
            txn.execute(
                "SELECT id FROM job_queue WHERE parent_job_id=? AND source_event_id=? AND plugin=? "
                "AND command=? AND pipeline IS ? AND step_id IS ?",
                (parent_job_id, spec.source_event_id, spec.plugin, spec.command, spec.pipeline, spec.step_id),
            )
            row = txn.fetchone()
            if row:
                return EnqueueResult(row[0], existing=True)
        context_id = new_id() if spec.context is not None else None
        job_id = new_id()
        status = FAILED if spec.error is not None else QUEUED
        values = (
            job_id, spec.plugin, spec.command, _dumps(spec.payload), status, max(1, spec.max_attempts),
            spec.submitted_by, spec.dedupe_key or None, now, now if spec.error is not None else None,
            spec.error, parent_job_id, spec.source_event_id, context_id, spec.pipeline, spec.step_id,
        )
        if spec.dedupe_key and spec.error is None:
            # Inserted only if no queued/running job, nor one that succeeded
            # within the dedupe window, has the same (key, plugin, command).
            txn.execute(_INSERT_JOB + " WHERE NOT EXISTS (" + _DUPLICATE + ")",
                        values + (spec.dedupe_key, spec.plugin, spec.command, now - self.dedupe_ttl))
            if txn.rowcount == 0:
                existing = self._find_duplicate(txn, spec, now)
                return EnqueueResult(existing, deduplicated=True)
        else:
            txn.execute(_INSERT_JOB, values)
        if context_id is not None:
            txn.execute(
                "INSERT INTO event_context (id, parent_id, pipeline_name, step_id, accumulated_json, created_at) "
                "VALUES (?,?,?,?,?,?)",
                (context_id, spec.context_parent_id, spec.pipeline, spec.step_id, _dumps(spec.context), now),
            )
        if spec.error is not None:
            _transition(txn, job_id, QUEUED, FAILED, spec.error, now)
            _job_log(txn, job_id, spec.plugin, spec.command, FAILED, 1, None, spec.error, None, 0.0, now)
        return EnqueueResult(job_id)

    def _insert_batch(
        self, txn: Any, items: Sequence[tuple[Sequence[JobSpec], float]]
    ) -> list[list[EnqueueResult]]:
        """
        Insert the jobs of many C{enqueue} calls, in order, inside the
        batch's transaction: plain jobs through the enqueue view in as few
        statements as the parameter limit allows (L{_insert_via_view});
        successors and pre-failed jobs, which are rare, by L{_insert}.
        """
        out, entries = _entries(items)
        plain: list[_Entry] = []
        for entry in entries:
            if _plain(entry.spec):
                plain.append(entry)
            else:
                self._insert_via_view(txn, plain)
                plain = []
                entry.results[entry.index] = self._insert(txn, entry.spec, entry.now)
        self._insert_via_view(txn, plain)
        return out

    def _insert_alone(
        self, txn: Any, items: Sequence[tuple[Sequence[JobSpec], float]]
    ) -> list[list[EnqueueResult]] | None:
        """
        A batch made only of plain enqueues that fit one statement, written
        as that ONE statement outside any transaction: SQLite begins, writes
        and commits (with the fsync) inside one call.  C{None} (and nothing
        written) for any other batch, which then goes through
        L{_insert_batch} inside a transaction.
        """
        out, entries = _entries(items)
        if not entries or len(entries) > _VIEW_ROWS_PER_STATEMENT or not all(_plain(e.spec) for e in entries):
            return None
        self._insert_via_view(txn, entries, committed_alone=True)
        return out

    def _insert_via_view(self, txn: Any, entries: list[_Entry], committed_alone: bool = False) -> None:
        """
        Plain jobs (and their contexts) through the connection's enqueue view
        (L{ductile.store.schema.ENQUEUE_VIEW}), whose trigger applies the
        dedupe rule (contract §4.4) row by row.  The common case — nothing
        was a duplicate — is told by the change count alone; only otherwise
        are the dropped jobs' duplicates looked up.  Duplicates within the
        batch point at the first of them.

        @param committed_alone: the statement is its own transaction, so a
            failure after it must not lead to a rerun (L{AlreadyWritten}).
        """
        if not entries:
            return
        rows: list[Any] = []
        inserted: list[_Entry] = []
        first_of: dict[tuple[str, str, str], _Entry] = {}
        later: list[tuple[_Entry, _Entry]] = []
        contexts = 0
        for entry in entries:
            spec, now = entry.spec, entry.now
            if spec.dedupe_key:
                triple = (spec.dedupe_key, spec.plugin, spec.command)
                first = first_of.get(triple)
                if first is not None:
                    later.append((entry, first))
                    continue
                first_of[triple] = entry
            job_id = new_id()
            context_id = None
            if spec.context is not None:
                context_id = new_id()
                contexts += 1
            rows.append((
                job_id, spec.plugin, spec.command, _dumps(spec.payload), max(1, spec.max_attempts),
                spec.submitted_by, spec.dedupe_key or None, now, spec.parent_job_id, spec.source_event_id,
                context_id, spec.pipeline, spec.step_id, spec.context_parent_id,
                None if spec.context is None else _dumps(spec.context), now - self.dedupe_ttl,
            ))
            entry.results[entry.index] = EnqueueResult(job_id)
            inserted.append(entry)
        connection = txn.connection
        before = connection.total_changes
        for start in range(0, len(rows), _VIEW_ROWS_PER_STATEMENT):
            chunk = rows[start:start + _VIEW_ROWS_PER_STATEMENT]
            txn.execute(_INSERT_VIEW + ",".join([_VIEW_ROW] * len(chunk)), [v for row in chunk for v in row])
        # Each inserted job is its row plus its "enqueued" transition (a
        # trigger), plus its context when it has one.
        if connection.total_changes - before != 2 * len(inserted) + contexts:
            try:
                self._resolve_dropped(txn, inserted)
            except Exception as e:
                if committed_alone:
                    raise AlreadyWritten("enqueued, but which were duplicates is unknown") from e
                raise
        for entry, first in later:
            result = first.results[first.index]
            entry.results[entry.index] = EnqueueResult(result.job_id, deduplicated=True)

    def _resolve_dropped(self, txn: Any, inserted: list[_Entry]) -> None:
        """The jobs the view dropped as duplicates point at the job that blocked them."""
        ids = [e.results[e.index].job_id for e in inserted]
        for start in range(0, len(ids), _MAX_VARIABLES):
            chunk = ids[start:start + _MAX_VARIABLES]
            txn.execute(f"SELECT id FROM job_queue WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            present = {row[0] for row in txn.fetchall()}
            for entry in inserted[start:start + _MAX_VARIABLES]:
                if entry.results[entry.index].job_id not in present:
                    existing = self._find_duplicate(txn, entry.spec, entry.now)
                    entry.results[entry.index] = EnqueueResult(existing, deduplicated=True)

    def _claim(
        self, txn: Any, limit: int, slots: dict[str, int], default_slots: int | None, now: float
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        txn.execute(
            "SELECT q.id, q.plugin, q.command, q.payload, q.attempt, q.max_attempts, q.submitted_by, "
            "q.dedupe_key, c.accumulated_json, q.event_context_id, q.pipeline, q.step_id, q.parent_job_id, "
            "ps.state FROM job_queue q LEFT JOIN event_context c ON c.id = q.event_context_id "
            "LEFT JOIN plugin_state ps ON ps.plugin_name = q.plugin "
            "WHERE q.status='queued' AND (q.next_retry_at IS NULL OR q.next_retry_at<=?) "
            "AND (q.dedupe_key IS NULL OR NOT EXISTS (SELECT 1 FROM job_queue r WHERE r.status='running' "
            "AND r.dedupe_key=q.dedupe_key AND r.plugin=q.plugin AND r.command=q.command)) "
            "ORDER BY q.created_at, q.rowid LIMIT ?",
            (now, limit * 4 + 16),
        )
        claimed: list[ClaimedJob] = []
        keys: set[tuple[str, str, str]] = set()
        for row in txn.fetchall():
            if len(claimed) >= limit:
                break
            plugin = row[1]
            free = slots.get(plugin, default_slots if default_slots is not None else limit)
            if free <= 0:
                continue
            if row[7]:
                key = (row[7], plugin, row[2])
                if key in keys:
                    continue
                keys.add(key)
            slots[plugin] = free - 1
            claimed.append(
                ClaimedJob(
                    id=row[0], plugin=plugin, command=row[2], payload=json.loads(row[3]),
                    attempt=row[4], max_attempts=row[5], submitted_by=row[6], dedupe_key=row[7],
                    context=json.loads(row[8]) if row[8] else {}, context_id=row[9],
                    pipeline=row[10], step_id=row[11], parent_job_id=row[12],
                    state=json.loads(row[13]) if row[13] else {},
                )
            )
        if claimed:
            # Two statements however many were claimed (a multi-row INSERT, not
            # executemany: each row stepped hands the GIL to the reactor and back).
            txn.execute(
                "UPDATE job_queue SET status='running', started_at=NULL, next_retry_at=NULL WHERE id IN ("
                + ",".join("?" * len(claimed)) + ")",
                [job.id for job in claimed],
            )
            _insert_rows(txn, _INSERT_TRANSITIONS, "(?,?,?,?,?)",
                         [(job.id, QUEUED, RUNNING, f"attempt {job.attempt}", now) for job in claimed])
        return claimed

    def _complete(self, txn: Any, job: ClaimedJob, c: Completion, now: float) -> list[EnqueueResult]:
        # The guarded UPDATE is also the check that this attempt is still the
        # job's running one (no separate SELECT: one statement less per job).
        if c.status == QUEUED:
            txn.execute(
                "UPDATE job_queue SET status='queued', attempt=attempt+?, next_retry_at=?, last_error=?, "
                "started_at=NULL WHERE id=? AND status='running' AND attempt=?",
                (1 if c.count_attempt else 0, c.next_retry_at, c.error, job.id, job.attempt),
            )
        else:
            txn.execute(
                "UPDATE job_queue SET status=?, completed_at=?, last_error=?, result=? "
                "WHERE id=? AND status='running' AND attempt=?",
                (c.status, now, c.error, None if c.result is None else _dumps(c.result), job.id, job.attempt),
            )
        if txn.rowcount != 1:
            self.log.warn(
                "ignoring completion of job {job_id} attempt {attempt}: it is no longer running",
                job_id=job.id, attempt=job.attempt,
            )
            return []
        if c.relay_attempt is not None:
            r = c.relay_attempt
            txn.execute(
                "INSERT INTO relay_attempts (job_id, attempt, instance, outcome, status_code, error, duration, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                (job.id, job.attempt, r.instance, r.outcome, r.status_code, r.error, r.duration, now),
            )
        log_status = c.status if c.status != QUEUED else (FAILED if c.error else c.status)
        if c.count_attempt:
            _job_log(txn, job.id, job.plugin, job.command, log_status, job.attempt, c.stdout, c.error,
                     c.stderr, c.duration, now)
        if c.status == QUEUED:
            _transition(txn, job.id, RUNNING, QUEUED, c.error or "retry", now)
            return []
        _transition(txn, job.id, RUNNING, c.status, c.error or "", now)
        if c.state_updates:
            txn.execute("SELECT state FROM plugin_state WHERE plugin_name=?", (job.plugin,))
            existing = txn.fetchone()
            state = json.loads(existing[0]) if existing else {}
            state.update(c.state_updates)
            txn.execute(
                "INSERT INTO plugin_state (plugin_name, state, updated_at) VALUES (?,?,?) "
                "ON CONFLICT(plugin_name) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
                (job.plugin, _dumps(state), now),
            )
        return [self._insert(txn, s, now, parent=job.id) for s in c.successors]

    def _recover(
        self, txn: Any, now: float, hooks: Callable[[Any, str, float], Sequence[JobSpec]] | None = None
    ) -> list[tuple[str, str, str]]:
        txn.execute("SELECT id, plugin, attempt, max_attempts, started_at FROM job_queue WHERE status='running'")
        out = []
        for job_id, plugin, attempt, max_attempts, started_at in txn.fetchall():
            if started_at is None:
                txn.execute(
                    "UPDATE job_queue SET status='queued', next_retry_at=NULL WHERE id=?",
                    (job_id,),
                )
                _transition(txn, job_id, RUNNING, QUEUED, "crash recovery: claimed, never started", now)
                out.append((job_id, plugin, QUEUED))
            elif attempt + 1 <= max_attempts:
                txn.execute(
                    "UPDATE job_queue SET status='queued', attempt=attempt+1, started_at=NULL, "
                    "next_retry_at=NULL, last_error=? WHERE id=?",
                    ("interrupted by a restart", job_id),
                )
                _transition(txn, job_id, RUNNING, QUEUED, "crash recovery: requeued", now)
                out.append((job_id, plugin, QUEUED))
            else:
                txn.execute(
                    "UPDATE job_queue SET status='dead', completed_at=?, last_error=? WHERE id=?",
                    (now, "interrupted by a restart with no attempts left", job_id),
                )
                _transition(txn, job_id, RUNNING, DEAD, "crash recovery: out of attempts", now)
                out.append((job_id, plugin, DEAD))
                for spec in hooks(txn, job_id, now) if hooks is not None else ():
                    self._insert(txn, spec, now, parent=job_id)
        return out

    def _replay(self, txn: Any, job_id: str, submitted_by: str, now: float) -> str:
        job = fetch_job(txn, job_id)
        if job is None:
            raise KeyError(job_id)
        if job["status"] not in (FAILED, DEAD, TIMED_OUT):
            raise ValueError(f"job {job_id} is {job['status']}; only failed, timed_out or dead jobs can be replayed")
        context = None
        if job["event_context_id"]:
            txn.execute("SELECT accumulated_json FROM event_context WHERE id=?", (job["event_context_id"],))
            row = txn.fetchone()
            context = json.loads(row[0]) if row else None
        spec = JobSpec(
            plugin=job["plugin"], command=job["command"], payload=job["payload"], submitted_by=submitted_by,
            max_attempts=job["max_attempts"], dedupe_key=job["dedupe_key"], parent_job_id=job["parent_job_id"],
            context=context, context_parent_id=job["event_context_id"], pipeline=job["pipeline"],
            step_id=job["step_id"],
        )
        result = self._insert(txn, spec, now)
        assert result.job_id is not None
        return result.job_id

    def kill_queued(self, plugins: Sequence[str], reason: str) -> defer.Deferred[list[str]]:
        """
        Make every queued job of C{plugins} C{dead} with C{reason} (what a
        config reload does to the waiting work of plugins it removed or
        disabled, contract §4.2); fire with their ids.  So are jobs claimed
        ahead but not started (a claim that was in flight); running jobs
        are left to finish.
        """
        names = sorted(set(plugins))
        now = self._clock.seconds()

        def kill(txn: Any) -> list[str]:
            ids: list[str] = []
            for name in names:
                txn.execute(
                    "SELECT id, status FROM job_queue WHERE plugin=? AND "
                    "(status='queued' OR (status='running' AND started_at IS NULL))",
                    (name,),
                )
                for job_id, status in txn.fetchall():
                    txn.execute(
                        "UPDATE job_queue SET status='dead', completed_at=?, last_error=?, next_retry_at=NULL "
                        "WHERE id=? AND status=?",
                        (now, reason, job_id, status),
                    )
                    _transition(txn, job_id, status, DEAD, reason, now)
                    ids.append(job_id)
            return ids

        if not names:
            return defer.succeed([])
        return self._writer.submit(kill).addCallback(self._notify)


_INSERT_JOB = (
    "INSERT INTO job_queue (id, plugin, command, payload, status, attempt, max_attempts, submitted_by, "
    "dedupe_key, created_at, completed_at, last_error, parent_job_id, source_event_id, event_context_id, "
    "pipeline, step_id) SELECT ?,?,?,?,?,1,?,?,?,?,?,?,?,?,?,?,?"
)
_DUPLICATE_WHERE = duplicate_where("?", "?", "?", "?")
_DUPLICATE = "SELECT 1 FROM job_queue q WHERE " + _DUPLICATE_WHERE
_INSERT_TRANSITIONS = "INSERT INTO job_transitions (job_id, from_status, to_status, reason, created_at) VALUES "
#: SQLite's smallest default limit on bound parameters per statement (999
#: before 3.32), so a multi-row statement fits any SQLite Python links.
_MAX_VARIABLES = 999
_INSERT_VIEW = f"INSERT INTO {ENQUEUE_VIEW} ({', '.join(ENQUEUE_VIEW_COLUMNS)}) VALUES "
_VIEW_ROW = "(" + ",".join("?" * len(ENQUEUE_VIEW_COLUMNS)) + ")"
_VIEW_ROWS_PER_STATEMENT = _MAX_VARIABLES // len(ENQUEUE_VIEW_COLUMNS)
#: Stands for a result L{JobQueue._insert_via_view} has yet to fill in.
_PLACEHOLDER = EnqueueResult(None)


def _insert_rows(txn: Any, insert: str, row_marks: str, rows: list[tuple[Any, ...]]) -> None:
    """Multi-row INSERTs: one statement (one GIL round trip) per chunk."""
    if not rows:
        return
    per_chunk = max(1, _MAX_VARIABLES // len(rows[0]))
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start:start + per_chunk]
        txn.execute(insert + ",".join([row_marks] * len(chunk)), [v for row in chunk for v in row])


@attrs.frozen
class _Entry:
    """A job of L{JobQueue._insert_batch} whose result goes to C{results[index]}."""

    results: list[EnqueueResult]
    index: int
    spec: JobSpec
    now: float


@attrs.frozen(eq=False)
class _Enqueues:
    """The write group of L{JobQueue.enqueue}: items are C{(specs, now)}."""

    queue: JobQueue

    def run(self, txn: Any, items: Sequence[tuple[Sequence[JobSpec], float]]) -> list[list[EnqueueResult]]:
        return self.queue._insert_batch(txn, items)

    def run_alone(
        self, txn: Any, items: Sequence[tuple[Sequence[JobSpec], float]]
    ) -> list[list[EnqueueResult]] | None:
        return self.queue._insert_alone(txn, items)


def _entries(
    items: Sequence[tuple[Sequence[JobSpec], float]]
) -> tuple[list[list[EnqueueResult]], list[_Entry]]:
    """Each enqueue call's result list (to be filled in), and its jobs in order."""
    out = [[_PLACEHOLDER] * len(specs) for specs, _ in items]
    entries = [_Entry(results, i, spec, now)
               for results, (specs, now) in zip(out, items) for i, spec in enumerate(specs)]
    return out, entries


def _plain(spec: JobSpec) -> bool:
    """A job the enqueue view can write: not pre-failed, not a successor (those check for a retried completion)."""
    return spec.error is None and not (spec.parent_job_id and spec.source_event_id)


def _transition(txn: Any, job_id: str, frm: str | None, to: str, reason: str, now: float) -> None:
    txn.execute(
        "INSERT INTO job_transitions (job_id, from_status, to_status, reason, created_at) VALUES (?,?,?,?,?)",
        (job_id, frm, to, reason, now),
    )


def _job_log(
    txn: Any, job_id: str, plugin: str, command: str, status: str, attempt: int,
    result: str | None, error: str | None, stderr: str | None, duration: float, now: float,
) -> None:
    txn.execute(
        "INSERT OR IGNORE INTO job_log (id, job_id, plugin, command, status, attempt, result, last_error, "
        "stderr, duration, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (f"{job_id}-{attempt}", job_id, plugin, command, status, attempt, result, error, stderr, duration, now),
    )


JOB_COLUMNS = (
    "id", "plugin", "command", "payload", "status", "attempt", "max_attempts", "submitted_by", "dedupe_key",
    "created_at", "started_at", "completed_at", "next_retry_at", "last_error", "result", "parent_job_id",
    "source_event_id", "event_context_id", "pipeline", "step_id",
)


def _row_to_job(row: Sequence[Any]) -> dict[str, Any]:
    job = dict(zip(JOB_COLUMNS, row))
    job["payload"] = json.loads(job["payload"]) if job["payload"] else {}
    job["result"] = json.loads(job["result"]) if job["result"] else None
    return job


def fetch_job(txn: Any, job_id: str) -> dict[str, Any] | None:
    """One job row as a dict (works on a pool cursor or a plain sqlite3 cursor)."""
    txn.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM job_queue WHERE id=?", (job_id,))
    row = txn.fetchone()
    return _row_to_job(row) if row else None


STATUS_ALIASES = {"pending": QUEUED, "ok": SUCCEEDED, "error": FAILED}


def list_jobs(
    txn: Any,
    status: str | Iterable[str] | None = None,
    plugin: str | None = None,
    command: str | None = None,
    submitted_by: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    where, args = [], []
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        statuses = [STATUS_ALIASES.get(s, s) for s in statuses]
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args += statuses
    if plugin:
        where.append("plugin=?")
        args.append(plugin)
    if command:
        where.append("command=?")
        args.append(command)
    if submitted_by:
        where.append("submitted_by=?")
        args.append(submitted_by)
    sql = f"SELECT {', '.join(JOB_COLUMNS)} FROM job_queue"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
    args.append(int(limit))
    txn.execute(sql, args)
    return [_row_to_job(r) for r in txn.fetchall()]


def job_tree(txn: Any, job_id: str) -> list[dict[str, Any]]:
    root = fetch_job(txn, job_id)
    if root is None:
        return []
    out, frontier = [root], [job_id]
    while frontier:
        marks = ",".join("?" * len(frontier))
        txn.execute(
            f"SELECT {', '.join(JOB_COLUMNS)} FROM job_queue WHERE parent_job_id IN ({marks}) "
            "ORDER BY created_at, rowid",
            frontier,
        )
        children = [_row_to_job(r) for r in txn.fetchall()]
        out += children
        frontier = [c["id"] for c in children]
    return out


def relay_attempts(txn: Any, job_id: str) -> list[dict[str, Any]]:
    txn.execute(
        "SELECT attempt, instance, outcome, status_code, error, duration, created_at FROM relay_attempts "
        "WHERE job_id=? ORDER BY id",
        (job_id,),
    )
    keys = ("attempt", "instance", "outcome", "status_code", "error", "duration", "created_at")
    return [dict(zip(keys, row)) for row in txn.fetchall()]
