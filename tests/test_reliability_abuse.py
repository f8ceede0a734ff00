"""
Abuse against a real relay receiver: a mixed storm of hostile and broken
requests over real loopback TCP, into the real ingress, acceptor, router and
SQLite queue (the dispatcher is not running, so every enqueued job stays in
the table to be counted).

Promises checked: nothing unauthenticated is ever enqueued; no answer is a
5xx; no handler crashes (trial fails a test on any logged failure); a valid
relay sent in the middle of the storm is still accepted; a captured valid
request replayed inside the skew window makes no second job, and after the
window is refused with 403.

The receiver's clock is a L{task.Clock} shared by the ingress and the queue,
so "after the window" is one C{advance} away, with no sleeping.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Mapping

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from ductile.config import load_config
from ductile.instance import build_instance
from ductile.relay.acceptor import RelayAcceptor
from ductile.relay.ingress import ingress_body_limit_for, mount_remote_ingress
from ductile.relay.signing import sign
from ductile.relay.stats import IngressStats
from ductile.testing.db import make_queue
from ductile.testing.instance import write_config
from ductile.testing.plugins import write_recorder
from ductile.timestamps import format_rfc3339nano
from ductile.web.limits import DuctileSite
from tests.test_relay_ingress import Response, connect, exchange, raw_request

SECRET = "abuse-lab-secret-5b1e"
OTHER_SECRET = "abuse-open-peer-secret"
PEER = "home-primary"
PATH = f"/ingest/peer/{PEER}"
NOW = 1777802400.0
MAX_BODY = 8192
SKEW = 300.0


def lab_config_dir(base: str, records: str) -> str:
    """The seed's receiver: one peer (key id v1), one pipeline on backup.ready."""
    plugins = os.path.join(base, "plugins")
    write_recorder(plugins, "backup-verifier")
    return write_config(os.path.join(base, "lab"), {
        "config.yaml": {
            "service": {"name": "lab"},
            "plugin_roots": [plugins],
            "plugins": {"backup-verifier": {"config": {"record_file": records}}},
            "api": {"enabled": True, "listen": "127.0.0.1:0"},
            "state": {"path": "./data/state.db"},
            "tokens": [{"name": "lab-v1", "key": SECRET}, {"name": "open-o1", "key": OTHER_SECRET}],
            "remote_ingress": {
                "listen_path": "/ingest/peer",
                "max_body_size": MAX_BODY,
                "allowed_clock_skew": f"{int(SKEW)}s",
                "require_key_id": True,
                "peers": [
                    {"name": PEER, "secret_ref": "lab-v1", "key_id": "v1",
                     "accept": ["backup.ready"], "baggage": {"allow": ["trace_id"]}},
                    {"name": "open-peer", "secret_ref": "open-o1", "key_id": "o1"},
                ],
            },
            "pipelines": [{
                "name": "process-offsite-backup", "on": "backup.ready",
                "steps": [{"id": "verify-backup", "uses": "backup-verifier"}],
            }],
        },
    })


class Receiver:
    """
    The receiving side as the service wires it (see L{ductile.service}),
    with a L{task.Clock} as the ingress's and the queue's clock.
    """

    def __init__(self, testcase: TestCase) -> None:
        base = os.path.abspath(testcase.mktemp())
        config = load_config(lab_config_dir(base, os.path.join(base, "records.jsonl")), environ={})
        instance = build_instance(config)
        self.clock = task.Clock()
        self.clock.rightNow = NOW
        self.queue, self.pool, self.db_path = make_queue(testcase, self.clock)
        self.stats = IngressStats()
        root = Resource()
        assert config.remote_ingress is not None
        acceptor = RelayAcceptor(config, instance.router, self.queue)
        mount_remote_ingress(root, config.remote_ingress, acceptor, self.clock, self.stats)
        site = DuctileSite(
            root, body_limit_for=ingress_body_limit_for(config.remote_ingress, 1 << 20, self.stats)
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def job_rows(self) -> list[tuple[Any, ...]]:
        """Every row of C{job_queue}, read with a separate plain connection."""
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute("SELECT id, dedupe_key, submitted_by FROM job_queue").fetchall()
        finally:
            conn.close()


def body_of(event_type: str = "backup.ready", event_id: str | None = "evt-1", origin: str = PEER,
            dedupe_key: str | None = None, **payload: Any) -> bytes:
    event: dict[str, Any] = {"type": event_type, "payload": payload or {"archive_id": "a"}}
    if dedupe_key is not None:
        event["dedupe_key"] = dedupe_key
    o: dict[str, Any] = {"instance": origin}
    if event_id is not None:
        o["event_id"] = event_id
    return json.dumps({"event": event, "origin": o}).encode()


def signed(body: bytes, *, peer: str = PEER, secret: str = SECRET, key_id: str | None = "v1",
           timestamp: float = NOW, path: str | None = None, header_peer: str | None = None,
           drop: tuple[str, ...] = ()) -> dict[str, str]:
    path = path if path is not None else f"/ingest/peer/{peer}"
    ts = format_rfc3339nano(timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-Ductile-Peer": header_peer if header_peer is not None else peer,
        "X-Ductile-Timestamp": ts,
        "X-Ductile-Signature": sign(secret, "POST", path, ts, body),
    }
    if key_id is not None:
        headers["X-Ductile-Key-Id"] = key_id
    for name in drop:
        headers.pop(name, None)
    return headers


def chunked_request(path: str, headers: Mapping[str, str], body: bytes, chunk: int = 1000) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for i in range(0, len(body), chunk):
        piece = body[i:i + chunk]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def storm() -> list[tuple[str, bytes, bool]]:
    """
    C{(kind, raw bytes, hang_up_early)} for every hostile request: 390 of
    them, none of which may be accepted.
    """
    good = body_of()
    out: list[tuple[str, bytes, bool]] = []

    def add(kind: str, raw: bytes, n: int, early: bool = False) -> None:
        out.extend((kind, raw, early) for _ in range(n))

    add("bad signature", raw_request(PATH, signed(good, secret="guessed-secret"), good), 30)
    add("other peer's secret", raw_request(PATH, signed(good, secret=OTHER_SECRET), good), 15)
    add("signature over another body", raw_request(PATH, signed(body_of(archive_id="x")), good), 15)
    add("signature for another path", raw_request(PATH, signed(good, path="/ingest/peer/open-peer"), good), 10)
    add("unknown peer", raw_request("/ingest/peer/mallory", signed(good, peer="mallory"), good), 20)
    add("peer header mismatch", raw_request(PATH, signed(good, header_peer="open-peer"), good), 15)
    add("stale timestamp", raw_request(PATH, signed(good, timestamp=NOW - SKEW - 1), good), 20)
    add("future timestamp", raw_request(PATH, signed(good, timestamp=NOW + SKEW + 1), good), 20)
    add("missing timestamp", raw_request(PATH, signed(good, drop=("X-Ductile-Timestamp",)), good), 10)
    add("missing signature", raw_request(PATH, signed(good, drop=("X-Ductile-Signature",)), good), 10)
    add("missing key id", raw_request(PATH, signed(good, key_id=None), good), 10)
    add("wrong key id", raw_request(PATH, signed(good, key_id="v9"), good), 10)
    add("no relay headers", raw_request(PATH, {"Content-Type": "application/json"}, good), 10)
    add("garbage timestamp", raw_request(PATH, dict(signed(good), **{"X-Ductile-Timestamp": "yesterday"}), good), 10)
    junk = b'{"event": {"type": "backup.ready", "payload": '
    add("malformed JSON, signed", raw_request(PATH, signed(junk), junk), 15)
    add("malformed JSON, unsigned", raw_request(PATH, signed(junk, secret="x"), junk), 10)
    for kind, body in (
        ("event type not accepted", body_of("backup.deleted")),
        ("event type bad form", body_of("Backup.Ready")),
        ("event type missing", json.dumps({"event": {"payload": {}}}).encode()),
        ("origin of another instance", body_of(origin="open-peer")),
    ):
        add(kind, raw_request(PATH, signed(body), body), 10)
    add("huge header line", raw_request(PATH, dict(signed(good), **{"X-Pad": "a" * 20000}), good), 10)
    many = dict(signed(good), **{f"X-Pad-{i}": "b" for i in range(150)})
    add("too many headers", raw_request(PATH, many, good), 10)
    big = body_of(blob="z" * (MAX_BODY + 10))
    add("oversize body, declared", raw_request(PATH, signed(big), big), 10)
    add("oversize body, chunked", chunked_request(PATH, signed(big), big), 10)
    add("chunked, bad signature", chunked_request(PATH, signed(good, secret="nope"), good, chunk=7), 10)
    lied = raw_request(PATH, signed(good), good).replace(
        b"Content-Length: %d" % len(good), b"Content-Length: %d" % (len(good) + 500))
    add("body shorter than declared, hang-up", lied, 10, early=True)
    add("headers cut off, hang-up", raw_request(PATH, signed(good), good)[:120], 10, early=True)
    add("body cut off, hang-up", raw_request(PATH, signed(good), good)[:-20], 10, early=True)
    add("wrong method", raw_request(PATH, signed(good), good, method="PUT"), 10)
    return out


async def send_raw(port: int, raw: bytes, hang_up: bool) -> Response:
    if not hang_up:
        return await exchange(port, raw)
    proto = await connect(port)
    proto.transport.write(raw)
    await task.deferLater(reactor, 0.01, lambda: None)
    proto.transport.abortConnection()
    return Response(await proto.done)


class StormTests(TestCase):
    timeout = 60

    async def test_storm_accepts_nothing_but_the_valid_relay(self) -> None:
        """
        390 hostile requests, 25 at a time, with one valid relay in the
        middle: 0 accepted but that one, 0 rows but its job, 0 answers >= 500,
        each kind answered with the status its check owes.
        """
        receiver = Receiver(self)
        requests = storm()
        self.assertGreaterEqual(len(requests), 350)
        valid_body = body_of(event_id="evt-valid")
        valid = raw_request(PATH, signed(valid_body), valid_body)
        statuses: dict[str, set[int]] = {}
        valid_answer: list[Response] = []
        batch = 25
        for start in range(0, len(requests), batch):
            group = requests[start:start + batch]
            calls = [send_raw(receiver.port, raw, early) for _, raw, early in group]
            if start == batch * 8:
                calls.append(exchange(receiver.port, valid))
            answers = await defer.gatherResults([defer.ensureDeferred(c) for c in calls])
            for (kind, _, _), answer in zip(group, answers):
                statuses.setdefault(kind, set()).add(answer.status)
            if len(answers) > len(group):
                valid_answer.append(answers[-1])

        [answer] = valid_answer
        self.assertEqual(answer.status, 202, answer.raw)
        job_id = answer.json()["job_id"]
        expected = {
            "bad signature": {403}, "other peer's secret": {403}, "signature over another body": {403},
            "signature for another path": {403}, "unknown peer": {403}, "peer header mismatch": {403},
            "stale timestamp": {403}, "future timestamp": {403}, "missing timestamp": {403},
            "missing signature": {403}, "missing key id": {403}, "wrong key id": {403},
            "no relay headers": {403}, "garbage timestamp": {403},
            "malformed JSON, signed": {400}, "malformed JSON, unsigned": {403},
            "event type not accepted": {422}, "event type bad form": {400}, "event type missing": {400},
            "origin of another instance": {403},
            # Twisted answers 400 and closes with the line unread: the client
            # may see the 400 or only the reset.
            "huge header line": {0, 400}, "too many headers": {400},
            "oversize body, declared": {413}, "oversize body, chunked": {413},
            "chunked, bad signature": {403},
            # A client that hangs up gets nothing (0: no status line read).
            "body shorter than declared, hang-up": {0}, "headers cut off, hang-up": {0},
            "body cut off, hang-up": {0},
            "wrong method": {405},
        }
        self.assertEqual(set(statuses), set(expected))
        for kind, seen in statuses.items():
            self.assertTrue(seen <= expected[kind], f"{kind}: answered {seen}, expected {expected[kind]}")
        self.assertFalse(any(s >= 500 for seen in statuses.values() for s in seen))
        self.assertEqual(receiver.stats.accepted, 1)
        self.assertEqual(receiver.job_rows(), [(job_id, f"relay:{PEER}:{PEER}:evt-valid", f"relay:{PEER}")])
        # Rejections counted by the reason the contract names, none as a 5xx row.
        for reason in ("accept_error", "enqueue_failed", "storage_unavailable"):
            self.assertNotIn(reason, receiver.stats.rejected)


class ReplayTests(TestCase):
    timeout = 30

    async def test_replay_inside_window_then_after(self) -> None:
        """
        The same captured bytes: first 202 (a job), again inside the window
        202 with the same job id (deduplicated, no second row), and once the
        receiver's clock passes the skew window, 403 clock skew.
        """
        receiver = Receiver(self)
        body = body_of(event_id="evt-captured")
        captured = raw_request(PATH, signed(body), body)
        first = await exchange(receiver.port, captured)
        self.assertEqual(first.status, 202, first.raw)
        receiver.clock.advance(SKEW - 1)
        second = await exchange(receiver.port, captured)
        self.assertEqual(second.status, 202, second.raw)
        self.assertEqual(second.json()["job_id"], first.json()["job_id"])
        self.assertEqual(len(receiver.job_rows()), 1)
        self.assertEqual(receiver.stats.deduplicated, 1)
        receiver.clock.advance(2)
        late = await exchange(receiver.port, captured)
        self.assertEqual((late.status, late.json()), (403, {"error": "relay timestamp outside allowed clock skew"}))
        self.assertEqual(len(receiver.job_rows()), 1)

    async def test_replay_with_explicit_dedupe_key(self) -> None:
        """A replay of a request keyed only by its explicit dedupe key: still one job."""
        receiver = Receiver(self)
        body = body_of(event_id=None, dedupe_key="backup.ready:nightly-1")
        captured = raw_request(PATH, signed(body), body)
        answers = [await exchange(receiver.port, captured) for _ in range(3)]
        self.assertEqual([a.status for a in answers], [202, 202, 202])
        self.assertEqual(len({a.json()["job_id"] for a in answers}), 1)
        self.assertEqual(len(receiver.job_rows()), 1)

    async def test_client_gone_before_the_answer_then_retries(self) -> None:
        """
        A sender that hangs up right after sending a valid relay (the answer
        is lost) and retries the same event: one job, the retry gets its id.
        """
        receiver = Receiver(self)
        body = body_of(event_id="evt-hangup")
        proto = await connect(receiver.port)
        proto.transport.write(raw_request(PATH, signed(body), body))
        proto.transport.loseConnection()
        await proto.done
        # The hang-up may land before or after the commit; either way a retry
        # must find at most the one job.
        for _ in range(100):
            if receiver.stats.accepted or receiver.job_rows():
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        retry = await exchange(receiver.port, raw_request(PATH, signed(body, timestamp=NOW + 1), body))
        self.assertEqual(retry.status, 202, retry.raw)
        rows = receiver.job_rows()
        self.assertEqual([r[0] for r in rows], [retry.json()["job_id"]])
