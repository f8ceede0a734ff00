"""
The abuse storm against a real receiver daemon: thousands of hostile or
broken requests over loopback, 16 clients at a time, with one valid relay
sent in the middle whose acceptance time is measured.

Promises: 0 accepted (but the valid one), 0 jobs enqueued (but its one),
0 answers >= 500, 0 crashes (the daemon stays up, logs no unhandled error),
and the valid relay is accepted promptly (under 2 s) during the storm.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reliability.cluster import Daemon, Registry

PEER = "home-primary"
PATH = f"/ingest/peer/{PEER}"
MAX_BODY = 1 << 20  # the default remote_ingress.max_body_size


def _body(event_type: str = "backup.ready", origin: str = PEER, event_id: str | None = "evt-storm",
          **payload: Any) -> bytes:
    o: dict[str, Any] = {"instance": origin}
    if event_id:
        o["event_id"] = event_id
    return json.dumps({"event": {"type": event_type, "payload": payload or {"archive_id": "storm"}},
                       "origin": o}).encode()


def _headers(secret: str, body: bytes, *, peer: str = PEER, path: str | None = None, skew: float = 0.0,
             key_id: str | None = "v1", header_peer: str | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    from ductile.relay.signing import sign
    from ductile.timestamps import format_rfc3339nano

    path = path or f"/ingest/peer/{peer}"
    ts = format_rfc3339nano(time.time() + skew)
    headers = {"Content-Type": "application/json", "X-Ductile-Peer": header_peer or peer,
               "X-Ductile-Timestamp": ts, "X-Ductile-Signature": sign(secret, "POST", path, ts, body)}
    if key_id is not None:
        headers["X-Ductile-Key-Id"] = key_id
    for name in drop:
        headers.pop(name, None)
    return headers


def _raw(path: str, headers: dict[str, str], body: bytes, method: str = "POST", chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        out = ("\r\n".join(lines) + "\r\n\r\n").encode()
        for i in range(0, len(body), 4096):
            piece = body[i:i + 4096]
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
        return out + b"0\r\n\r\n"
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build(secret: str, count: int) -> list[tuple[str, bytes, str]]:
    """C{count} requests as C{(kind, bytes, how)}, how in C{send}, C{cut}, C{trickle}."""
    good = _body()
    big = _body(blob="z" * (MAX_BODY + 100))
    junk = b'{"event": {"type": "backup.ready", "payload": '
    makers = [
        ("bad signature", lambda: _raw(PATH, _headers("guessed", good), good), "send"),
        ("unknown peer", lambda: _raw("/ingest/peer/mallory", _headers(secret, good, peer="mallory"), good), "send"),
        ("peer mismatch", lambda: _raw(PATH, _headers(secret, good, header_peer="lab"), good), "send"),
        ("stale", lambda: _raw(PATH, _headers(secret, good, skew=-400), good), "send"),
        ("future", lambda: _raw(PATH, _headers(secret, good, skew=400), good), "send"),
        ("missing headers", lambda: _raw(PATH, {"Content-Type": "application/json"}, good), "send"),
        ("missing signature", lambda: _raw(PATH, _headers(secret, good, drop=("X-Ductile-Signature",)), good), "send"),
        ("missing key id", lambda: _raw(PATH, _headers(secret, good, key_id=None), good), "send"),
        ("malformed JSON", lambda: _raw(PATH, _headers(secret, junk), junk), "send"),
        ("wrong event type", lambda: (lambda b: _raw(PATH, _headers(secret, b), b))(_body("backup.deleted")), "send"),
        ("bad event type", lambda: (lambda b: _raw(PATH, _headers(secret, b), b))(_body("Bad Type")), "send"),
        ("origin mismatch", lambda: (lambda b: _raw(PATH, _headers(secret, b), b))(_body(origin="lab")), "send"),
        ("huge header", lambda: _raw(PATH, dict(_headers(secret, good), **{"X-Pad": "a" * 20000}), good), "send"),
        ("oversize", lambda: _raw(PATH, _headers(secret, big), big), "send"),
        ("oversize chunked", lambda: _raw(PATH, _headers(secret, big), big, chunked=True), "send"),
        ("chunked bad signature", lambda: _raw(PATH, _headers("nope", good), good, chunked=True), "send"),
        ("early disconnect", lambda: _raw(PATH, _headers(secret, good), good)[:-10], "cut"),
        ("trickle", lambda: _raw(PATH, _headers(secret, good), good), "trickle"),
    ]
    out = []
    for i in range(count):
        kind, make, how = makers[i % len(makers)]
        if how == "trickle" and i % (len(makers) * 10) != len(makers) - 1:
            kind, make, how = makers[0]  # keep the trickling clients few: each takes seconds
        out.append((kind, make(), how))
    return out


def _status(raw: bytes) -> int:
    try:
        return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    except (IndexError, ValueError):
        return 0


def send(port: int, data: bytes, how: str) -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        if how == "cut":
            sock.sendall(data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return 0, b""
        if how == "trickle":
            for i in range(0, 60, 6):
                sock.sendall(data[i:i + 6])
                time.sleep(0.1)
            return 0, b""
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early (413, 400): read what was answered
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        raw = b"".join(chunks)
        return _status(raw), raw
    finally:
        sock.close()


def storm(daemon: Daemon, secret: str, count: int, row: Any) -> None:
    requests = build(secret, count)
    statuses: Counter[int] = Counter()
    kinds: dict[str, Counter[int]] = {}
    valid_time: list[float] = []

    def one(item: tuple[str, bytes, str]) -> tuple[str, int]:
        kind, data, how = item
        try:
            status, _ = send(daemon.port, data, how)
        except OSError:
            status = -1
        return kind, status

    def valid() -> tuple[str, int]:
        body = _body(event_id="evt-valid-during-storm")
        began = time.monotonic()
        status, raw = send(daemon.port, _raw(PATH, _headers(secret, body), body), "send")
        valid_time.append(time.monotonic() - began)
        return "valid", status

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, item) for item in requests[: count // 2]]
        futures.append(pool.submit(valid))
        futures += [pool.submit(one, item) for item in requests[count // 2:]]
        for f in futures:
            kind, status = f.result()
            kinds.setdefault(kind, Counter())[status] += 1
            statuses[status] += 1
    row.sent = count
    valid_status = kinds.pop("valid")
    row.accepted = sum(c[202] for c in kinds.values())
    row.server_errors = sum(n for s, n in statuses.items() if s >= 500)
    row.promise(row.accepted == 0, f"{row.accepted} hostile requests were accepted")
    row.promise(valid_status[202] == 1, f"the valid relay during the storm was answered {dict(valid_status)}")
    row.promise(bool(valid_time) and valid_time[0] < 2.0,
                f"the valid relay took {valid_time[0] if valid_time else -1:.2f}s during the storm")
    if valid_time:
        row.notes.append(f"valid relay accepted in {valid_time[0] * 1000:.0f} ms mid-storm")
    row.notes.append("answers: " + ", ".join(f"{s or 'none'}: {n}" for s, n in sorted(statuses.items())))
    row.promise(statuses[-1] == 0, f"{statuses[-1]} connections failed outright")


def abuse_storm(options: Any, registry: Registry) -> Any:
    from ductile.testing.plugins import write_recorder
    from reliability.scenarios import SECRET, TOKEN, Row, clean_exit, lab_config
    from reliability.cluster import free_port

    row = Row("abuse-storm")
    began = time.monotonic()
    base = os.path.join(options.workdir, "abuse")
    plugins = os.path.join(base, "plugins")
    write_recorder(plugins, "sink", commands=("handle",))
    records = os.path.join(base, "records.jsonl")
    port = free_port()
    daemon = Daemon(registry, "lab", lab_config(os.path.join(base, "lab"), port, plugins, records), port, TOKEN)
    try:
        daemon.start()
        storm(daemon, SECRET, options.abuse_requests, row)
        row.crashes = (0 if daemon.check_alive() else 1) + daemon.log_text().count("Unhandled Error")
        tracebacks = daemon.log_text().count("Traceback (most recent call last)")
        row.promise(tracebacks == 0, f"{tracebacks} tracebacks in the receiver's log")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if daemon.query("SELECT COUNT(*) FROM job_queue WHERE status IN ('queued','running')")[0][0] == 0:
                break
            time.sleep(0.1)
        jobs = daemon.query("SELECT dedupe_key FROM job_queue")
        row.promise([j[0] for j in jobs] == [f"relay:{PEER}:{PEER}:evt-valid-during-storm"],
                    f"jobs enqueued by the storm: {[j[0] for j in jobs]}")
        row.processed = len(jobs)
        code, _ = daemon.terminate()
        row.promise(clean_exit(code), f"receiver exited with {code} on SIGTERM after the storm")
    finally:
        row.seconds = time.monotonic() - began
    return row
