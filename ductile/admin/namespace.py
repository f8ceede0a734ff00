"""
What an operator finds in the manhole: the live objects of a running
L{ductile.service.DuctileService} and a few helpers.

Manhole code runs in the reactor thread, so the helpers never block: each
returns a Deferred (database reads and writes go through the pool's
threads).  The manhole prints C{<Deferred #N>} at once and
C{Deferred #N called back: ...} when it fires; the results have a
readable C{repr} (a table, an indented record) for that line.
"""
from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer

#: Names taken from the service, in the order C{help()} lists them.
LIVE_OBJECTS = (
    ("service", "the DuctileService itself"),
    ("config", "the loaded Config"),
    ("queue", "JobQueue (durable SQLite job queue)"),
    ("dispatcher", "Dispatcher (claims and runs jobs)"),
    ("runner", "ProcessRunner (plugin subprocesses)"),
    ("sender", "RelaySender (outbound relay deliveries; None without relay instances)"),
    ("pool", "adbapi ConnectionPool on the state database"),
    ("reactor", "the reactor (code here runs in its thread: never block)"),
    ("router", "pipeline Router"),
    ("plugins", "discovered plugins by name"),
    ("ingress_stats", "relay ingress counters"),
)

_RELAY_PLUGIN = "core.relay"


class Text(str):
    """A string the REPL shows without quotes."""

    def __repr__(self) -> str:
        return str(self)


class Record(dict):  # type: ignore[type-arg]
    """A dict the REPL shows as indented JSON."""

    def __repr__(self) -> str:
        return "\n" + json.dumps(self, indent=2, sort_keys=True, default=str)


class Table(list):  # type: ignore[type-arg]
    """Rows (dicts) the REPL shows as an aligned table of C{columns}."""

    def __init__(self, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
        super().__init__(rows)
        self.columns = columns

    def __repr__(self) -> str:
        if not self:
            return "(none)"
        cells = [[_cell(row.get(c)) for c in self.columns] for row in self]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
        return "\n" + "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return str(value)


class Helpers:
    """The helper functions, bound to a service whose attributes are read at call time."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def _queue(self) -> Any:
        queue = getattr(self._service, "queue", None)
        if queue is None:
            raise RuntimeError("the job queue is not open yet (the service is still starting)")
        return queue

    def jobs(self, status: str | None = None, limit: int = 20) -> defer.Deferred[Table]:
        """jobs(status=None, limit=20): newest jobs, optionally by status (queued, running, failed, dead, ...)."""
        d = self._queue().list_jobs(status=status, limit=limit)
        return d.addCallback(
            lambda rows: Table(rows, ("id", "plugin", "command", "status", "attempt", "created_at", "last_error"))
        )

    def job(self, job_id: str) -> defer.Deferred[Record]:
        """job(job_id): one job in full, with relay attempts for a delivery."""

        async def get() -> Record:
            queue = self._queue()
            row = await queue.get_job(job_id)
            if row is None:
                raise KeyError(f"no job {job_id}")
            record = Record(row)
            if row["plugin"] == _RELAY_PLUGIN:
                record["relay_attempts"] = await queue.relay_attempts(job_id)
            return record

        return defer.ensureDeferred(get())

    def deliveries(self, status: str | None = None, limit: int = 20) -> defer.Deferred[Table]:
        """deliveries(status=None, limit=20): outbound relay deliveries (core.relay jobs), newest first."""

        async def get() -> Table:
            rows = await self._queue().list_jobs(status=status, plugin=_RELAY_PLUGIN, limit=limit)
            out = []
            for row in rows:
                relay = (row.get("payload") or {}).get("relay") or {}
                out.append({**row, "to": relay.get("to"), "event_type": relay.get("event_type")})
            return Table(out, ("id", "to", "event_type", "status", "attempt", "created_at", "last_error"))

        return defer.ensureDeferred(get())

    def replay(self, job_id: str) -> defer.Deferred[Text]:
        """replay(job_id): queue a fresh copy of a failed, timed_out or dead job (e.g. a dead delivery)."""
        d = self._queue().replay(job_id, submitted_by="manhole")
        return d.addCallback(lambda new_id: Text(f"queued {new_id} (replay of {job_id})"))

    def help(self) -> None:
        """help(): this text."""
        print(HELP_TEXT)


def _help_text() -> str:
    lines = ["ductile manhole. Live objects:"]
    lines += [f"  {name:<14} {what}" for name, what in LIVE_OBJECTS]
    lines += ["Helpers (return Deferreds; the result is printed when it arrives):"]
    for name in ("jobs", "job", "deliveries", "replay", "help"):
        lines.append("  " + (getattr(Helpers, name).__doc__ or name))
    lines.append("Code runs in the reactor thread: never call anything that blocks.")
    return "\n".join(lines)


HELP_TEXT = _help_text()


def admin_namespace(service: Any) -> dict[str, Any]:
    """
    The manhole's globals for a L{ductile.service.DuctileService}: its live
    objects (see L{LIVE_OBJECTS}; C{plugins} and C{router} come from
    C{service.instance}) and the helpers C{jobs}, C{job}, C{deliveries},
    C{replay}, C{help}.  Build it once the service has opened its queue.
    """
    instance = getattr(service, "instance", None)
    ns: dict[str, Any] = {"service": service}
    for name, _ in LIVE_OBJECTS[1:]:
        if name in ("router", "plugins"):
            ns[name] = getattr(instance, name, None)
        else:
            ns[name] = getattr(service, name, None)
    helpers = Helpers(service)
    for name in ("jobs", "job", "deliveries", "replay", "help"):
        ns[name] = getattr(helpers, name)
    return ns
