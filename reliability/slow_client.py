"""
Slow-client protection, checked in memory on the instance's real site
(L{ductile.web.limits.DuctileSite} with the relay mounted) driven by a
fake clock, so minutes of trickling take no time.

Promise (issue 10): a client that trickles its headers or body is cut off by
a deadline.  A client that sends one byte every C{interval} seconds, well
inside the site's idle timeout, for C{duration} seconds: is it cut off?
"""
from __future__ import annotations

import time

from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from ductile.config.models import Peer, PeerKey, RemoteIngress
from ductile.relay.ingress import ingress_body_limit_for, mount_remote_ingress
from ductile.relay.stats import IngressStats
from ductile.web.limits import DuctileSite


class _NoAcceptor:
    def accept(self, *args):  # pragma: no cover - never reached: the request never completes
        raise AssertionError("a trickled request must not reach the acceptor")


def trickle(part: str, interval: float = 20.0, duration: float = 600.0) -> tuple[bool, float]:
    """
    Trickle C{part} ("headers" or "body") one byte per C{interval} seconds
    for up to C{duration}; return C{(cut_off, seconds_until_cut)}.
    """
    clock = MemoryReactorClock()
    ingress = RemoteIngress(peers=(Peer(name="home-primary", keys=(PeerKey("k", "s", "v1"),)),))
    root = Resource()
    mount_remote_ingress(root, ingress, _NoAcceptor(), task.Clock(), IngressStats())
    site = DuctileSite(root, body_limit_for=ingress_body_limit_for(ingress, 1 << 20), reactor=clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    head = b"POST /ingest/peer/home-primary HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
    if part == "headers":
        stream = head + b"X-Pad: " + b"a" * 100000
    else:
        channel.dataReceived(head + b"\r\n")
        stream = b"{" * 100000
    elapsed = 0.0
    for byte in stream:
        if transport.disconnecting or elapsed >= duration:
            break
        channel.dataReceived(bytes([byte]))
        clock.advance(interval)
        elapsed += interval
    cut = transport.disconnecting
    channel.connectionLost(None)
    return cut, elapsed


def slow_client(options, registry):
    from reliability.scenarios import Row

    row = Row("slow-client")
    began = time.monotonic()
    for part in ("headers", "body"):
        cut, elapsed = trickle(part)
        row.sent += 1
        row.notes.append(f"trickled {part}: {'cut off after' if cut else 'still connected after'} {elapsed:g}s "
                         f"(fake clock, one byte per 20s)")
        row.promise(cut, f"a client trickling its {part} one byte per 20s is never cut off "
                         f"(only the 60s idle timeout applies; still connected after {elapsed:g}s)")
    row.seconds = time.monotonic() - began
    return row
