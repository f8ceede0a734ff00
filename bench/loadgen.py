"""
The load generator: our own small Twisted HTTP/1.1 client, run as a
separate process so it is not the server's bottleneck (each side gets one of
the machine's cores).

It keeps C{--connections} keep-alive connections busy for C{--duration}
seconds after a C{--warmup} whose requests are not counted, sending one
request at a time per connection.  Every request is a relay delivery signed
exactly as a ductile sender signs it (HMAC-SHA256 over method, path,
timestamp and body), with a unique C{origin.event_id} so no request is a
duplicate; the bare baseline server receives the very same bytes.

C{--upload N} instead sends C{N}-byte bodies (declared in Content-Length)
on every connection at once and records the status each one gets.

Prints C{RESULT {json}}: counts per status, rate, latency p50/p99 (ms) and
the generator's own CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import protocol, reactor  # noqa: E402

from common import emit, percentile  # noqa: E402
from ductile.relay.signing import sign  # noqa: E402
from ductile.timestamps import format_rfc3339nano  # noqa: E402


class Requests:
    """Builds signed relay POSTs of a fixed body size."""

    def __init__(self, path: str, peer: str, secret: str, size: int) -> None:
        self.path, self.peer, self.secret, self.size = path, peer, secret, size
        self.n = 0
        self.prefix = f"{os.getpid()}-{int(time.time() * 1000)}"
        self._stamp_at = 0.0
        self._stamp = ""

    def _body(self) -> bytes:
        self.n += 1
        head = ('{"event":{"type":"bench.event","payload":{"n":%d,"data":"' % self.n)
        tail = '"}},"origin":{"instance":"%s","event_id":"%s-%d"}}' % (self.peer, self.prefix, self.n)
        pad = max(0, self.size - len(head) - len(tail))
        return (head + "x" * pad + tail).encode()

    def next(self) -> bytes:
        now = time.time()
        if now - self._stamp_at > 0.5:
            self._stamp_at, self._stamp = now, format_rfc3339nano(now)
        body = self._body()
        sig = sign(self.secret, "POST", self.path, self._stamp, body)
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Ductile-Peer: {self.peer}\r\nX-Ductile-Timestamp: {self._stamp}\r\n"
            f"X-Ductile-Key-Id: v1\r\nX-Ductile-Signature: {sig}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body


class Stats:
    def __init__(self) -> None:
        self.counting = False
        self.statuses: dict[str, int] = {}
        self.latencies: list[float] = []
        self.errors = 0

    def record(self, status: int, latency: float) -> None:
        if self.counting:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.latencies.append(latency)


class Client(protocol.Protocol):
    """One keep-alive connection, one outstanding request; parses just enough HTTP."""

    def __init__(self, gen: Requests, stats: Stats, running: list[bool]) -> None:
        self.gen, self.stats, self.running = gen, stats, running
        self.buf = b""

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.send()

    def send(self) -> None:
        if not self.running[0]:
            self.transport.loseConnection()
            return
        self.buf = b""
        self.started = time.perf_counter()
        self.transport.write(self.gen.next())

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        done = _complete(self.buf)
        if done is None:
            return
        status, close = done
        self.stats.record(status, time.perf_counter() - self.started)
        if close:
            self.transport.loseConnection()
            self.stats.errors += 1
        else:
            self.send()


def _complete(buf: bytes) -> tuple[int, bool] | None:
    """C{(status, connection-close)} once a whole response is in C{buf}."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    status = int(head[9:12])
    body = buf[end + 4:]
    i = head.find(b"content-length:")
    if i >= 0:
        length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
        if len(body) < length:
            return None
    elif b"transfer-encoding: chunked" in head:
        if not body.endswith(b"0\r\n\r\n"):
            return None
    return status, b"connection: close" in head


class Uploader(protocol.Protocol):
    """Declares C{size} bytes, streams them until the server answers or closes."""

    def __init__(self, path: str, size: int, results: list[int], done: list[int]) -> None:
        self.path, self.size, self.results, self.done = path, size, results, done
        self.buf = b""
        self.status: int | None = None

    def connectionMade(self) -> None:
        self.transport.write(
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ductile-Peer: bench-peer\r\n"
            f"Content-Length: {self.size}\r\n\r\n".encode()
        )
        self.sent = 0
        self.transport.registerProducer(self, True)

    def resumeProducing(self) -> None:
        chunk = b"x" * 65536
        while self.status is None and self.sent < self.size and self.transport.connected:
            self.transport.write(chunk[: self.size - self.sent])
            self.sent += min(65536, self.size - self.sent)
            if getattr(self, "_paused", False):
                return

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.status is None and len(self.buf) >= 12:
            self.status = int(self.buf[9:12])
            self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        self.results.append(self.status or 0)
        self.done[0] -= 1
        if self.done[0] == 0:
            _stop()


def run_load(args: argparse.Namespace) -> dict:
    gen = Requests(args.path, args.peer, args.secret, args.size)
    stats = Stats()
    running = [True]
    factory = protocol.ClientFactory()
    factory.buildProtocol = lambda addr: Client(gen, stats, running)
    for _ in range(args.connections):
        reactor.connectTCP("127.0.0.1", args.port, factory)
    marks: dict[str, float] = {}

    def begin() -> None:
        stats.counting = True
        marks["t0"], marks["cpu0"] = time.perf_counter(), _cpu()

    def end() -> None:
        stats.counting = False
        marks["t1"], marks["cpu1"] = time.perf_counter(), _cpu()
        running[0] = False
        reactor.callLater(0.5, _stop)

    reactor.callLater(args.warmup, begin)
    reactor.callLater(args.warmup + args.duration, end)
    reactor.callLater(args.warmup + args.duration + 10, _stop)  # hard bound
    reactor.run()
    if "t1" not in marks:
        raise SystemExit("load generator interrupted")
    elapsed = marks["t1"] - marks["t0"]
    total = sum(stats.statuses.values())
    lat = [x * 1000 for x in stats.latencies]
    return {
        "requests": total, "statuses": stats.statuses, "errors": stats.errors, "seconds": elapsed,
        "rate": total / elapsed, "ok_rate": stats.statuses.get(str(args.ok), 0) / elapsed,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "generator_cpu_s": marks["cpu1"] - marks["cpu0"], "connections": args.connections,
    }


def run_upload(args: argparse.Namespace) -> dict:
    results: list[int] = []
    done = [args.connections]
    factory = protocol.ClientFactory()
    factory.buildProtocol = lambda addr: Uploader(args.path, args.upload, results, done)
    for _ in range(args.connections):
        reactor.connectTCP("127.0.0.1", args.port, factory)
    t0 = time.perf_counter()
    reactor.callLater(args.duration, _stop)  # hard bound
    reactor.run()
    statuses: dict[str, int] = {}
    for s in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {"uploads": args.connections, "statuses": statuses, "seconds": time.perf_counter() - t0}


def _stop() -> None:
    if reactor.running:
        reactor.stop()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ingest/peer/bench-peer")
    p.add_argument("--peer", default="bench-peer")
    p.add_argument("--secret", default="bench-secret")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--ok", type=int, default=202)
    p.add_argument("--upload", type=int, default=0, help="send bodies of this many bytes instead")
    args = p.parse_args()
    emit(run_upload(args) if args.upload else run_load(args))


if __name__ == "__main__":
    main()
