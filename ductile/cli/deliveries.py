"""
C{ductile relay deliveries} and C{ductile relay replay} (issue 6): the
durable relay jobs (C{core.relay}) seen from the state database, and a
re-enqueue of a dead one with the same payload and dedupe key (so a replay
of something the receiver already has is deduplicated there).

Replay prefers the running instance's API (C{POST
/relay/deliveries/<id>/replay}) so its dispatcher starts the delivery at
once; when nothing answers on C{api.listen} it writes the copy into the
database with the queue's own transaction (L{JobQueue._replay}).
"""
from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import time
import urllib.parse
from typing import Any, Callable, TextIO

from ductile import jobview as db
from ductile.cli import format as fmt
from ductile.cli.job_cmd import add_common, open_state, run

#: Seconds the API replay request may take before we give up on the API.
API_TIMEOUT = 10.0
REPLAY_SUBMITTER = "cli replay"
#: Bytes of the API's answer we read.
MAX_ANSWER = 64 * 1024
#: Scopes that allow the replay route (C{relay:rw}, or everything).
REPLAY_SCOPES = ("relay:rw", "*")


def register_verbs(verbs: Any) -> None:
    """Add C{deliveries} and C{replay} to the C{relay} noun's verb subparsers."""
    dl = verbs.add_parser(
        "deliveries",
        help="list outbound relay deliveries (core.relay jobs)",
        description=(
            "List relay deliveries from the state database, newest first: target instance, event "
            "type, attempts, next retry and last error."
        ),
    )
    dl.add_argument(
        "--status",
        metavar="S",
        help="only deliveries in this state: pending, retrying, queued (both), running, delivered, dead, failed",
    )
    dl.add_argument("--instance", metavar="NAME", help="only deliveries to this instances[].name")
    dl.add_argument("--limit", type=int, default=50, metavar="N", help="at most N deliveries (default 50)")
    add_common(dl, "print the deliveries as JSON")
    dl.set_defaults(handler=deliveries_handler)

    rp = verbs.add_parser(
        "replay",
        help="re-enqueue a dead or failed delivery",
        description=(
            "Enqueue a fresh copy of a dead/failed/timed-out delivery with the same payload and dedupe "
            "key. Uses the running instance's API when it answers, else writes to the state database."
        ),
    )
    rp.add_argument("job_id", metavar="ID", help=f"the delivery's job id (or a unique prefix of {db.MIN_PREFIX}+ chars)")
    add_common(rp, "print the new job as JSON")
    rp.set_defaults(handler=replay_handler)


# -- relay deliveries -------------------------------------------------------------


def _deliveries(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise db.InspectError("--limit must be 1 or more")
    conn = open_state(args)
    try:
        rows = db.list_deliveries(conn, args.status, args.instance, args.limit)
    finally:
        conn.close()
    if args.json:
        print(fmt.to_json({"deliveries": rows, "total": len(rows)}), file=out)
        return 0
    if not rows:
        print("no deliveries", file=out)
        return 0
    print(
        fmt.table(
            ("ID", "STATUS", "INSTANCE", "EVENT", "ATTEMPTS", "NEXT RETRY", "LAST ERROR"),
            [
                (r["id"], r["state"], r["to"] or "-", r["event_type"] or "-", f"{r['attempts']}/{r['max_attempts']}",
                 fmt.when(r["next_retry_at"]), fmt.truncate(r["last_error"], 60))
                for r in rows
            ],
        ),
        file=out,
    )
    return 0


def deliveries_handler(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    return run("ductile relay deliveries", _deliveries, args, out, err)


# -- relay replay -------------------------------------------------------------------


class ApiUnreachable(Exception):
    """Nothing usable answered on C{api.listen}: fall back to the database."""


def api_base_url(listen: str) -> str:
    """C{http://host:port} to reach an API listening on C{listen} from this machine."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def replay_token(config: Any) -> str | None:
    """A configured API token allowed to replay (C{relay:rw} or C{*}), if any."""
    from ductile.web.auth import expand_scopes

    for token in config.api.tokens:
        scopes = expand_scopes(token.scopes)
        if any(s in scopes for s in REPLAY_SCOPES):
            return str(token.token)
    return None


def post_replay(base_url: str, token: str, job_id: str, timeout: float = API_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """POST the replay of C{job_id} to the instance API (see L{post_json})."""
    return post_json(
        base_url, token, f"/relay/deliveries/{urllib.parse.quote(job_id, safe='')}/replay", b"{}",
        "the replay may or may not have been queued: check `ductile relay deliveries`", timeout,
    )


def post_json(
    base_url: str, token: str, path: str, body: bytes, unknown_outcome: str, timeout: float = API_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    """
    POST C{body} to the local instance API; C{(status, json body)}.

    Plain C{http.client}: no proxy from the environment ever sees the
    bearer token, and connecting is separate from asking, so only a failed
    connection (nothing listening) is a reason to fall back.

    @raise ApiUnreachable: no connection (refused, unreachable, timed out).
    @raise db.InspectError: connected, but no usable answer (the request
        may or may not have taken effect: C{unknown_outcome} says what to check).
    """
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as e:
            raise ApiUnreachable(e.strerror or str(e) or type(e).__name__) from None
        try:
            conn.request(
                "POST", path, body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            status, raw = response.status, response.read(MAX_ANSWER)
        except (OSError, http.client.HTTPException) as e:
            raise db.InspectError(
                f"no answer from the instance API at {base_url} ({type(e).__name__}: {e}); {unknown_outcome}"
            ) from None
    finally:
        conn.close()
    try:
        answer = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        answer = {"error": raw[:200].decode("utf-8", "replace")}
    return status, answer if isinstance(answer, dict) else {"body": answer}


def replay_in_database(path: str, job_id: str, dedupe_ttl: float, now: float) -> str:
    """
    Enqueue the copy directly, in one C{BEGIN IMMEDIATE} transaction with
    the queue's own replay logic.  Returns the new job id.

    @raise ValueError: the job is not in a replayable state.
    """
    from ductile.queue import JobQueue
    from ductile.store.pool import connect_blocking

    # _replay uses only the transaction and dedupe_ttl: no pool, writer or clock.
    shim = JobQueue(None, None, None, dedupe_ttl=dedupe_ttl)  # type: ignore[arg-type]
    conn = connect_blocking(path)
    try:
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            new_id = shim._replay(cursor, job_id, REPLAY_SUBMITTER, now)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return new_id
    finally:
        conn.close()


def _check_replayable(conn: sqlite3.Connection, text: str) -> dict[str, Any]:
    job_id = db.resolve_job_id(conn, text)
    from ductile.queue import fetch_job

    job = fetch_job(conn.cursor(), job_id)
    assert job is not None
    if job["plugin"] != db.RELAY_PLUGIN:
        raise db.InspectError(
            f"job {job_id} is a {job['plugin']} job, not a relay delivery ({db.RELAY_PLUGIN}); "
            "only deliveries can be replayed"
        )
    if job["status"] not in db.REPLAYABLE:
        raise db.InspectError(
            f"delivery {job_id} is {db.delivery_state(job)}; only dead, failed or timed_out deliveries "
            "can be replayed"
        )
    return job


def make_replay(
    post: Callable[[str, str, str], tuple[int, dict[str, Any]]] = post_replay,
    clock: Callable[[], float] = time.time,
) -> Callable[[argparse.Namespace, TextIO, TextIO], int]:
    """The replay verb body, with the HTTP call and clock injectable for tests."""

    def body(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        from ductile.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as e:
            raise db.InspectError(str(e)) from None
        path = config.state.path
        conn = db.open_readonly(path)
        try:
            job = _check_replayable(conn, args.job_id)
        finally:
            conn.close()
        job_id = job["id"]

        via = "database"
        new_id: str | None = None
        token = replay_token(config) if config.api.enabled else None
        if config.api.enabled and token is None:
            print(
                "note: no api.auth token with relay:rw scope in the config; writing the replay to the "
                "state database instead of asking the running instance",
                file=err,
            )
        if token is not None:
            base = api_base_url(config.api.listen)
            try:
                status, answer = post(base, token, job_id)
            except ApiUnreachable as e:
                print(f"note: the instance API at {base} is not reachable ({e}); writing to the state database",
                      file=err)
            else:
                if status != 202:
                    message = answer.get("error") or f"HTTP {status}"
                    raise db.InspectError(f"the instance API refused the replay of {job_id}: {message} (HTTP {status})")
                new_id = str(answer.get("job_id"))
                via = "api"
        if new_id is None:
            try:
                new_id = replay_in_database(path, job_id, config.service.dedupe_ttl, clock())
            except (KeyError, ValueError) as e:  # raced with another writer
                raise db.InspectError(str(e).strip("'")) from None

        if args.json:
            print(fmt.to_json({"job_id": new_id, "replay_of": job_id, "status": "queued", "via": via,
                               "dedupe_key": job["dedupe_key"]}), file=out)
        elif via == "api":
            print(f"Replaying delivery {job_id} as job {new_id} (queued on the running instance)", file=out)
        else:
            print(f"Replaying delivery {job_id} as job {new_id} (queued in {path}; "
                  "it starts when the instance next starts or claims work)", file=out)
        return 0

    return body


def replay_handler(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    post: Callable[[str, str, str], tuple[int, dict[str, Any]]] = post_replay,
) -> int:
    import sys

    err = err or sys.stderr
    body = make_replay(post)
    return run("ductile relay replay", lambda a, o: body(a, o, err), args, out, err)


__all__ = ["register_verbs", "deliveries_handler", "replay_handler"]
