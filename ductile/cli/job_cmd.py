"""
C{ductile job list} and C{ductile job inspect} (issue 7): read the state
database directly, so they work whether or not the instance is running.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any, Callable, TextIO

from ductile import jobview as db
from ductile.cli import format as fmt

#: Lines of each attempt's stderr C{job inspect} shows by default.
STDERR_TAIL = 20


def register(subparsers: Any) -> None:
    """Add the C{job} noun with C{list} and C{inspect}."""
    noun = subparsers.add_parser("job", help="inspect jobs in the state database")
    verbs = noun.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    lst = verbs.add_parser(
        "list",
        help="list jobs, newest first",
        description="List jobs from the state database, newest first (works while the instance is down).",
    )
    lst.add_argument(
        "--status",
        action="append",
        metavar="S",
        help="only jobs with this status (repeatable or comma-separated; aliases pending, ok, error)",
    )
    lst.add_argument("--plugin", metavar="P", help="only jobs of this plugin")
    lst.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)")
    add_common(lst, "print the jobs as JSON")
    lst.set_defaults(handler=list_handler)

    ins = verbs.add_parser(
        "inspect",
        help="show everything about one job",
        description=(
            "Show a job's fields, payload, result, each attempt (with the tail of its stderr), its "
            "transitions, context/baggage, parent and children, and for a relay job the delivery outcome."
        ),
    )
    ins.add_argument("job_id", metavar="ID", help=f"job id, or a unique prefix of at least {db.MIN_PREFIX} characters")
    ins.add_argument(
        "--stderr-lines", type=int, default=STDERR_TAIL, metavar="N",
        help=f"lines of each attempt's stderr to show (default {STDERR_TAIL})",
    )
    add_common(ins, "print the job as JSON")
    ins.set_defaults(handler=inspect_handler)


def add_common(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument(
        "--config", metavar="PATH", default=None,
        help="config file or directory (locates the state database: state.path)",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


# -- shared plumbing -------------------------------------------------------------


def state_path(args: argparse.Namespace) -> str:
    """
    C{state.path} of the configuration C{--config} names.

    @raise db.InspectError: the config cannot be loaded (the message says why).
    """
    from ductile.config import ConfigError, load_config

    try:
        return load_config(args.config).state.path
    except ConfigError as e:
        raise db.InspectError(str(e)) from None


def open_state(args: argparse.Namespace) -> sqlite3.Connection:
    """The state database opened read-only. @raise db.InspectError: as L{state_path}, or missing."""
    return db.open_readonly(state_path(args))


def run(
    prog: str,
    body: Callable[[argparse.Namespace, TextIO], int],
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run a verb body, turning L{db.InspectError} and a broken database into C{prog: message}, exit 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return body(args, out)
    except db.InspectError as e:
        print(f"{prog}: {e}", file=err)
        return 1
    except sqlite3.DatabaseError as e:
        print(f"{prog}: cannot read the state database: {e}", file=err)
        return 1


# -- job list ------------------------------------------------------------------------


def _list(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise db.InspectError("--limit must be 1 or more")
    statuses = db.normalize_statuses(args.status)
    conn = open_state(args)
    try:
        jobs = db.list_jobs(conn, statuses, args.plugin, args.limit)
    finally:
        conn.close()
    if args.json:
        rows = [
            {k: j[k] for k in ("id", "status", "plugin", "command", "attempt", "max_attempts", "created_at",
                               "completed_at", "next_retry_at", "last_error", "parent_job_id", "pipeline",
                               "step_id", "dedupe_key", "submitted_by")}
            for j in jobs
        ]
        print(fmt.to_json({"jobs": rows, "total": len(rows)}), file=out)
        return 0
    if not jobs:
        print("no jobs", file=out)
        return 0
    print(
        fmt.table(
            ("ID", "STATUS", "PLUGIN", "COMMAND", "ATTEMPT", "CREATED", "LAST ERROR"),
            [
                (j["id"], shown_status(j), j["plugin"], j["command"], f"{j['attempt']}/{j['max_attempts']}",
                 fmt.when(j["created_at"]), fmt.truncate(j["last_error"], 60))
                for j in jobs
            ],
        ),
        file=out,
    )
    return 0


def list_handler(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    return run("ductile job list", _list, args, out, err)


# -- job inspect -------------------------------------------------------------------


def _block(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return "\n".join("  " + line for line in text.splitlines())


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def shown_status(job: dict[str, Any]) -> str:
    """
    The status for people: a job the dispatcher claimed ahead of a free
    worker is stored as C{running} (Go's statuses) but has not started.
    """
    if job["status"] == "running" and job.get("started_at") is None:
        return "running (claimed, not started)"
    return str(job["status"])


def render_detail(d: dict[str, Any]) -> str:
    """The human form of L{db.job_detail}."""
    lines = [
        f"Job {d['id']}",
        f"  status:        {shown_status(d)}",
        f"  plugin:        {d['plugin']}",
        f"  command:       {d['command']}",
        f"  attempt:       {d['attempt']}/{d['max_attempts']}",
        f"  submitted by:  {d['submitted_by'] or '-'}",
    ]
    for label, key in (("dedupe key", "dedupe_key"), ("pipeline", "pipeline"), ("step", "step_id"),
                       ("source event", "source_event_id")):
        if d.get(key):
            lines.append(f"  {label + ':':<14} {d[key]}")
    for label, key in (("created", "created_at"), ("started", "started_at"), ("completed", "completed_at"),
                       ("next retry", "next_retry_at")):
        if d.get(key) is not None:
            lines.append(f"  {label + ':':<14} {fmt.when(d[key])}")
    if d.get("last_error"):
        lines.append(f"  last error:    {d['last_error']}")
    lines += ["", "Payload:", _block(d["payload"])]
    if d.get("result") is not None:
        lines += ["", "Result:", _block(d["result"])]

    relay = d.get("relay")
    if relay is not None:
        lines += ["", "Relay:", f"  to:            {relay['to'] or '-'}",
                  f"  event type:    {relay['event_type'] or '-'}", f"  delivery:      {relay['state']}"]
        if relay.get("dedupe_key"):
            lines.append(f"  dedupe key:    {relay['dedupe_key']}")
        for a in relay["attempts"]:
            code = a["status_code"] if a["status_code"] is not None else "-"
            line = (f"  attempt {a['attempt']}: {a['outcome']}  HTTP {code}  {fmt.duration(a['duration'])}"
                    f"  at {fmt.when(a['created_at'])}")
            if a["error"]:
                line += f"  error: {a['error']}"
            lines.append(line)
        accepted = relay.get("accepted")
        if accepted:
            lines.append(f"  receiver event id: {accepted.get('receiver_event_id') or '-'}")
            lines.append(f"  receiver job id:   {accepted.get('job_id') or '-'}")

    lines += ["", "Attempts:"]
    if not d["attempts"]:
        lines.append("  (none finished yet)")
    for a in d["attempts"]:
        line = f"  {a['attempt']}: {a['status']}  {fmt.duration(a['duration'])}  at {fmt.when(a['finished_at'])}"
        if a["error"]:
            line += f"  error: {a['error']}"
        lines.append(line)
        if a["stderr_tail"]:
            shown = len(a["stderr_tail"].splitlines())
            head = f"    stderr (last {shown} of {a['stderr_lines']} lines):" if shown < a["stderr_lines"] else "    stderr:"
            lines += [head, _indent(a["stderr_tail"])]

    lines += ["", "Transitions:"]
    for t in d["transitions"]:
        reason = f"  ({t['reason']})" if t["reason"] else ""
        lines.append(f"  {fmt.when(t['at'])}  {t['from'] or '-'} -> {t['to']}{reason}")

    ctx = d.get("context")
    if ctx is not None:
        lines += ["", "Baggage:", _block(ctx["baggage"]) if ctx["baggage"] else "  (none)"]
        lines += ["", "Internal context:", _block(ctx["internal"]) if ctx["internal"] else "  (none)"]

    lines += ["", "Parent:"]
    parent = d.get("parent")
    if parent:
        lines.append(f"  {parent['id']}  {parent['status']}  {parent['plugin']} {parent['command']}")
    elif d.get("parent_job_id"):
        lines.append(f"  {d['parent_job_id']} (no longer in the database)")
    else:
        lines.append("  (none)")
    lines += ["", "Children:"]
    if not d["children"]:
        lines.append("  (none)")
    for c in d["children"]:
        lines.append(f"  {c['id']}  {c['status']}  {c['plugin']} {c['command']}")
    return "\n".join(lines)


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    conn = open_state(args)
    try:
        job_id = db.resolve_job_id(conn, args.job_id)
        detail = db.job_detail(conn, job_id, max(0, args.stderr_lines))
    finally:
        conn.close()
    print(fmt.to_json(detail) if args.json else render_detail(detail), file=out)
    return 0


def inspect_handler(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    return run("ductile job inspect", _inspect, args, out, err)
