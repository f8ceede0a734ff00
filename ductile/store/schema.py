"""
Schema and migrations, versioned with C{PRAGMA user_version}.

Times are REAL epoch seconds (UTC): comparisons and indexes stay cheap, and
every reader formats them as RFC 3339 for people.
"""
from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: the job queue and everything hanging off it.
    """
    CREATE TABLE job_queue (
        id TEXT PRIMARY KEY,
        plugin TEXT NOT NULL,
        command TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER NOT NULL DEFAULT 4,
        submitted_by TEXT NOT NULL DEFAULT '',
        dedupe_key TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        next_retry_at REAL,
        last_error TEXT,
        result TEXT,
        parent_job_id TEXT,
        source_event_id TEXT,
        event_context_id TEXT,
        pipeline TEXT,
        step_id TEXT
    );
    CREATE INDEX job_queue_claim ON job_queue (status, created_at);
    CREATE INDEX job_queue_due ON job_queue (status, next_retry_at);
    CREATE INDEX job_queue_dedupe ON job_queue (dedupe_key, plugin, command, status, completed_at)
        WHERE dedupe_key IS NOT NULL;
    CREATE INDEX job_queue_parent ON job_queue (parent_job_id) WHERE parent_job_id IS NOT NULL;
    CREATE INDEX job_queue_plugin_status ON job_queue (plugin, status);
    CREATE UNIQUE INDEX job_queue_successor ON job_queue
        (parent_job_id, source_event_id, plugin, command, pipeline, step_id)
        WHERE source_event_id IS NOT NULL AND parent_job_id IS NOT NULL;

    CREATE TABLE job_transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX job_transitions_job ON job_transitions (job_id);

    CREATE TABLE job_log (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        plugin TEXT NOT NULL,
        command TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        result TEXT,
        last_error TEXT,
        stderr TEXT,
        duration REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX job_log_job ON job_log (job_id);

    CREATE TABLE event_context (
        id TEXT PRIMARY KEY,
        parent_id TEXT,
        pipeline_name TEXT,
        step_id TEXT,
        accumulated_json TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );

    CREATE TABLE plugin_state (
        plugin_name TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );

    CREATE TABLE relay_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        instance TEXT NOT NULL,
        outcome TEXT NOT NULL,
        status_code INTEGER,
        error TEXT NOT NULL DEFAULT '',
        duration REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX relay_attempts_job ON relay_attempts (job_id);
    """,
    # 2: retention pruning reads by age.
    """
    CREATE INDEX job_queue_completed ON job_queue (status, completed_at);
    CREATE INDEX job_log_created ON job_log (created_at);
    CREATE INDEX job_transitions_created ON job_transitions (created_at);
    CREATE INDEX relay_attempts_created ON relay_attempts (created_at);
    CREATE INDEX event_context_created ON event_context (created_at);
    """,
    # 3: the "enqueued" transition is written by the database itself (one
    # statement fewer per job on the ingress path).
    """
    CREATE TRIGGER job_enqueued AFTER INSERT ON job_queue
    BEGIN
        INSERT INTO job_transitions (job_id, from_status, to_status, reason, created_at)
        VALUES (NEW.id, NULL, 'queued', 'enqueued', NEW.created_at);
    END
    """,
    # 4: schedule state (contract §4.1): each schedule's next run and last
    # firing; a one-shot (at/after) is "exhausted" once it fired.
    """
    CREATE TABLE schedule_entries (
        plugin TEXT NOT NULL,
        schedule_id TEXT NOT NULL,
        command TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        reason TEXT,
        last_fired_at REAL,
        last_success_job_id TEXT,
        last_success_at REAL,
        next_run_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (plugin, schedule_id)
    );
    """,
)


def duplicate_where(key: str, plugin: str, command: str, cutoff: str) -> str:
    """
    Contract §4.4, the one place it is written: a job C{q} blocks a new one
    with dedupe key C{key} for C{plugin}/C{command} when it is queued or
    running, or succeeded at or after C{cutoff} (now minus the dedupe TTL).
    The arguments are SQL expressions (C{?} or C{NEW.column}).
    """
    return (
        f"q.dedupe_key={key} AND q.plugin={plugin} AND q.command={command} AND "
        f"(q.status IN ('queued','running') OR (q.status='succeeded' AND q.completed_at>={cutoff}))"
    )


#: Per-connection (TEMP, never in the file, so nothing Go sees): a burst of
#: enqueues as few statements as possible.  Each row inserted into the view
#: becomes a job (unless L{duplicate_where} finds one blocking it) and, if
#: the job was inserted, its context.  A lone statement outside BEGIN is its own
#: transaction: SQLite begins, writes and commits (with the fsync) inside one
#: C call, so the database thread gives up and wins back the GIL once per
#: burst instead of once per statement.
ENQUEUE_VIEW = "ductile_enqueue"
ENQUEUE_VIEW_COLUMNS = (
    "id", "plugin", "command", "payload", "max_attempts", "submitted_by", "dedupe_key", "created_at",
    "parent_job_id", "source_event_id", "event_context_id", "pipeline", "step_id", "context_parent_id",
    "context_json", "dedupe_cutoff",
)
CONNECTION_OBJECTS: tuple[str, ...] = (
    f"CREATE TEMP VIEW IF NOT EXISTS {ENQUEUE_VIEW} ({', '.join(ENQUEUE_VIEW_COLUMNS)}) AS SELECT "
    + ", ".join(["NULL"] * len(ENQUEUE_VIEW_COLUMNS)),
    f"""
    CREATE TEMP TRIGGER IF NOT EXISTS {ENQUEUE_VIEW}_insert INSTEAD OF INSERT ON {ENQUEUE_VIEW}
    BEGIN
        INSERT INTO job_queue (id, plugin, command, payload, status, attempt, max_attempts, submitted_by,
            dedupe_key, created_at, parent_job_id, source_event_id, event_context_id, pipeline, step_id)
        SELECT NEW.id, NEW.plugin, NEW.command, NEW.payload, 'queued', 1, NEW.max_attempts, NEW.submitted_by,
            NEW.dedupe_key, NEW.created_at, NEW.parent_job_id, NEW.source_event_id, NEW.event_context_id,
            NEW.pipeline, NEW.step_id
        WHERE NEW.dedupe_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM job_queue q
            WHERE {duplicate_where("NEW.dedupe_key", "NEW.plugin", "NEW.command", "NEW.dedupe_cutoff")});
        INSERT INTO event_context (id, parent_id, pipeline_name, step_id, accumulated_json, created_at)
        SELECT NEW.event_context_id, NEW.context_parent_id, NEW.pipeline, NEW.step_id, NEW.context_json,
            NEW.created_at
        WHERE NEW.event_context_id IS NOT NULL AND EXISTS (SELECT 1 FROM job_queue WHERE id=NEW.id);
    END
    """,
)


def create_connection_objects(conn: sqlite3.Connection) -> None:
    """The L{CONNECTION_OBJECTS}, on a connection to a migrated database."""
    for statement in CONNECTION_OBJECTS:
        conn.execute(statement)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """
    Apply every migration newer than the file's C{user_version}, each in its
    own transaction.  Returns the resulting version.
    """
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"state database schema version {version} is newer than this ductile "
            f"understands ({len(MIGRATIONS)}); upgrade ductile"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a script into whole statements (a trigger body holds semicolons)."""
    out, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending)
    return out
