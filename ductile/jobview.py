"""
Read-only views of the state database for the operator's CLI
(C{ductile job ...}, C{ductile relay deliveries}).

Everything here works on a plain C{sqlite3} connection with no reactor, so
the commands work while the instance is down; WAL lets them read the same
file while it runs.  Functions return plain dicts with times as epoch
seconds; the CLI formats them.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Iterable, Sequence

from ductile.queue import (
    DEAD,
    FAILED,
    JOB_COLUMNS,
    QUEUED,
    RUNNING,
    STATUS_ALIASES,
    STATUSES,
    SUCCEEDED,
    TIMED_OUT,
    _row_to_job,
    fetch_job,
    list_jobs as _list_jobs,
    relay_attempts,
)

RELAY_PLUGIN = "core.relay"  # == ductile.executor.RELAY_PLUGIN (not imported: keeps the CLI light)
#: Shortest id prefix accepted in place of a full job id.
MIN_PREFIX = 6
#: Context keys the runtime owns start with this.
INTERNAL_PREFIX = "ductile_"
#: Statuses a delivery can be replayed from.
REPLAYABLE = frozenset({FAILED, DEAD, TIMED_OUT})


class InspectError(Exception):
    """A problem to show the operator as is (the message says what and where)."""


class StateDatabaseMissing(InspectError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no state database at {path} (has the instance run yet?)")
        self.path = path


class JobNotFound(InspectError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


def open_readonly(path: str, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """
    Open the state database read-only (the CLI never takes the write lock
    for a read, so it cannot stall the running service).

    @raise StateDatabaseMissing: there is no file at C{path}.
    """
    if not os.path.isfile(path):
        raise StateDatabaseMissing(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def normalize_statuses(statuses: Iterable[str] | None) -> list[str]:
    """
    Map the operator's status words (with the aliases pending/ok/error) to
    stored statuses.

    @raise InspectError: an unknown status, naming the valid ones.
    """
    out: list[str] = []
    for raw in statuses or ():
        for word in raw.split(","):
            word = word.strip().lower()
            if not word:
                continue
            status = STATUS_ALIASES.get(word, word)
            if status not in STATUSES:
                valid = ", ".join(list(STATUSES) + sorted(STATUS_ALIASES))
                raise InspectError(f"unknown status {word!r} (expected one of: {valid})")
            if status not in out:
                out.append(status)
    return out


def resolve_job_id(conn: sqlite3.Connection, text: str) -> str:
    """
    The full id of the job C{text} names: an exact id, or a unique prefix
    of at least L{MIN_PREFIX} characters.

    @raise JobNotFound: no such job.
    @raise InspectError: the prefix is ambiguous.
    """
    text = text.strip()
    row = conn.execute("SELECT id FROM job_queue WHERE id=?", (text,)).fetchone()
    if row:
        return str(row[0])
    if len(text) < MIN_PREFIX:
        raise JobNotFound(text)
    rows = conn.execute(
        "SELECT id FROM job_queue WHERE substr(id, 1, ?)=? ORDER BY created_at LIMIT 6", (len(text), text)
    ).fetchall()
    if not rows:
        raise JobNotFound(text)
    if len(rows) > 1:
        more = ", ".join(r[0] for r in rows[:5])
        raise InspectError(f"job id prefix {text} is ambiguous: it matches {more}{' ...' if len(rows) > 5 else ''}")
    return str(rows[0][0])


def list_jobs(
    conn: sqlite3.Connection,
    statuses: Sequence[str] = (),
    plugin: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs newest first (statuses already normalised)."""
    return _list_jobs(conn.cursor(), status=list(statuses) or None, plugin=plugin, limit=limit)


def _loads(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def tail_lines(text: str | None, n: int) -> str | None:
    """The last C{n} lines of C{text} (C{None} stays C{None})."""
    if text is None:
        return None
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""


def split_context(context: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """C{(baggage, internal)}: the user's keys and the runtime's C{ductile_*} keys."""
    baggage: dict[str, Any] = {}
    internal: dict[str, Any] = {}
    for key, value in (context or {}).items():
        (internal if key.startswith(INTERNAL_PREFIX) else baggage)[key] = value
    return baggage, internal


def attempts(conn: sqlite3.Connection, job_id: str, stderr_lines: int = 20) -> list[dict[str, Any]]:
    """Each finished attempt from C{job_log}, with the tail of its stderr."""
    rows = conn.execute(
        "SELECT attempt, status, duration, last_error, stderr, result, created_at FROM job_log "
        "WHERE job_id=? ORDER BY attempt, created_at",
        (job_id,),
    ).fetchall()
    out = []
    for attempt, status, duration, error, stderr, result, created_at in rows:
        total = len(stderr.rstrip("\n").splitlines()) if stderr else 0
        out.append(
            {
                "attempt": attempt,
                "status": status,
                "duration": duration,
                "error": error,
                "stderr_tail": tail_lines(stderr, stderr_lines),
                "stderr_lines": total,
                "stdout": result,
                "finished_at": created_at,
            }
        )
    return out


def transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT from_status, to_status, reason, created_at FROM job_transitions WHERE job_id=? ORDER BY id",
        (job_id,),
    ).fetchall()
    return [{"from": f, "to": t, "reason": r, "at": at} for f, t, r, at in rows]


def context_of(conn: sqlite3.Connection, context_id: str | None) -> dict[str, Any] | None:
    if not context_id:
        return None
    row = conn.execute("SELECT accumulated_json FROM event_context WHERE id=?", (context_id,)).fetchone()
    if row is None:
        return None
    value = _loads(row[0])
    return value if isinstance(value, dict) else {"_": value}


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job["id"],
        "status": job["status"],
        "plugin": job["plugin"],
        "command": job["command"],
        "created_at": job["created_at"],
    }


def relay_target(job: dict[str, Any]) -> dict[str, Any]:
    """The C{relay} block a C{core.relay} job's payload carries."""
    payload = job.get("payload")
    relay = payload.get("relay") if isinstance(payload, dict) else None
    return relay if isinstance(relay, dict) else {}


def relay_outcome(conn: sqlite3.Connection, job: dict[str, Any]) -> dict[str, Any]:
    """Target, each delivery attempt, and the receiver's acceptance (when delivered)."""
    relay = relay_target(job)
    result = job.get("result")
    accepted = result.get("accepted") if isinstance(result, dict) else None
    return {
        "to": relay.get("to"),
        "event_type": relay.get("event_type") or (job.get("payload") or {}).get("type"),
        "dedupe_key": relay.get("dedupe_key") or job.get("dedupe_key"),
        "attempts": relay_attempts(conn.cursor(), job["id"]),
        "accepted": accepted if isinstance(accepted, dict) else None,
        "state": delivery_state(job),
    }


def job_detail(conn: sqlite3.Connection, job_id: str, stderr_lines: int = 20) -> dict[str, Any]:
    """
    Everything known about one job: its row, attempts, transitions, context
    split into baggage and internal keys, parent and children, and for a
    relay job the delivery outcome.

    @raise JobNotFound: no such job (C{job_id} must be a full id).
    """
    job = fetch_job(conn.cursor(), job_id)
    if job is None:
        raise JobNotFound(job_id)
    context = context_of(conn, job["event_context_id"])
    baggage, internal = split_context(context)
    parent = fetch_job(conn.cursor(), job["parent_job_id"]) if job["parent_job_id"] else None
    children = conn.execute(
        "SELECT id, status, plugin, command, created_at FROM job_queue WHERE parent_job_id=? ORDER BY created_at, rowid",
        (job_id,),
    ).fetchall()
    detail = dict(job)
    detail.update(
        {
            "attempts": attempts(conn, job_id, stderr_lines),
            "transitions": transitions(conn, job_id),
            "context": {"baggage": baggage, "internal": internal} if context is not None else None,
            "parent": _summary(parent) if parent else None,
            "children": [
                {"id": c[0], "status": c[1], "plugin": c[2], "command": c[3], "created_at": c[4]} for c in children
            ],
            "relay": relay_outcome(conn, job) if job["plugin"] == RELAY_PLUGIN else None,
        }
    )
    return detail


# -- relay deliveries ------------------------------------------------------------

#: Delivery states the operator sees, by stored status.
DELIVERY_STATES = ("pending", "retrying", "running", "delivered", "dead", "failed", "timed_out", "skipped")
_STATE_FILTER = {
    "pending": ([QUEUED], "pending"),
    "retrying": ([QUEUED], "retrying"),
    "queued": ([QUEUED], None),
    "running": ([RUNNING], None),
    "delivered": ([SUCCEEDED], None),
    "succeeded": ([SUCCEEDED], None),
    "ok": ([SUCCEEDED], None),
    "dead": ([DEAD], None),
    "failed": ([FAILED], None),
    "error": ([FAILED], None),
    "timed_out": ([TIMED_OUT], None),
    "skipped": (["skipped"], None),
}


def delivery_state(job: dict[str, Any]) -> str:
    """
    C{pending} (queued, first attempt), C{retrying} (queued after a failed
    attempt), C{running}, C{delivered}, or the terminal status.
    """
    status = job["status"]
    if status == QUEUED:
        return "retrying" if (job.get("attempt") or 1) > 1 or job.get("next_retry_at") else "pending"
    if status == SUCCEEDED:
        return "delivered"
    return str(status)


def list_deliveries(
    conn: sqlite3.Connection,
    state: str | None = None,
    instance: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """
    C{core.relay} jobs newest first, each with its target, event type,
    attempts made and delivery state.

    @raise InspectError: an unknown C{state}.
    """
    where = ["plugin=?"]
    args: list[Any] = [RELAY_PLUGIN]
    want = None
    if state:
        key = state.strip().lower()
        if key not in _STATE_FILTER:
            raise InspectError(f"unknown delivery status {state!r} (expected one of: {', '.join(_STATE_FILTER)})")
        statuses, want = _STATE_FILTER[key]
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args += statuses
    if instance:
        where.append("json_extract(payload, '$.relay.to')=?")
        args.append(instance.strip())
    sql = (
        f"SELECT {', '.join(JOB_COLUMNS)} FROM job_queue WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, rowid DESC"
    )
    out: list[dict[str, Any]] = []
    for row in conn.execute(sql, args):
        job = _row_to_job(row)
        job_state = delivery_state(job)
        if want is not None and job_state != want:
            continue
        relay = relay_target(job)
        made = conn.execute("SELECT COUNT(*) FROM relay_attempts WHERE job_id=?", (job["id"],)).fetchone()[0]
        out.append(
            {
                "id": job["id"],
                "status": job["status"],
                "state": job_state,
                "to": relay.get("to"),
                "event_type": relay.get("event_type") or job["payload"].get("type"),
                "dedupe_key": job["dedupe_key"],
                "attempts": made,
                "attempt": job["attempt"],
                "max_attempts": job["max_attempts"],
                "next_retry_at": job["next_retry_at"] if job["status"] == QUEUED else None,
                "last_error": job["last_error"],
                "created_at": job["created_at"],
                "completed_at": job["completed_at"],
            }
        )
        if len(out) >= limit:
            break
    return out
