"""
The relay receiver: C{POST {listen_path}/{peer}} (contract §1.1-1.11).

L{RemoteIngressResource} runs the contract's checks in their exact order
(§1.7) and answers each failure with Go's status and C{{"error": ...}}
message; a request that passes becomes a fresh local root event handed to an
L{Acceptor}, and the C{202} is written only once the acceptor's Deferred
fires, i.e. once the resulting jobs are durable.  The body size cap is
enforced earlier still, before buffering, by L{ductile.web.limits}
(see L{ingress_body_limit_for}).

Extensions (DESIGN.md): key rotation (a peer may hold several keys, the
C{X-Ductile-Key-Id} header picks one); a storage failure answers 503 with
C{Retry-After} instead of Go's 500; every rejection is logged once and
counted by reason in L{IngressStats}.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Union
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages, server
from twisted.web.resource import IResource, Resource

from ductile.config.models import Peer, PeerKey, RemoteIngress
from ductile.errors import StorageUnavailable
from ductile.events import RELAY_EVENT_TYPE, Event
from ductile.relay import admission
from ductile.config.relay import normalise_listen_path
from ductile.relay.admission import Rejected, Row
from ductile.relay.envelope import EnvelopeError, decode_envelope
from ductile.relay.signing import verify
from ductile.relay.stats import IngressStats
from ductile.web.json_response import write_error, write_json
from ductile.web.limits import BodyLimit, BodyLimitFor, prefix_limit_for, remote_address

DEFAULT_LISTEN_PATH = "/ingest/peer"
#: Seconds a sender should wait after a 503 (storage unavailable).
RETRY_AFTER_SECONDS = 5

log = Logger(namespace="ductile.relay.ingress")


@attrs.frozen
class Acceptance:
    """
    What an L{Acceptor} may fire with when it knows more than the job id:
    C{deduplicated} is true when C{job_id} is an existing job (a replay).
    """

    job_id: str | None
    deduplicated: bool = False


AcceptResult = Union[str, None, Acceptance]


class Acceptor(Protocol):
    """The seam to the queue and router (implemented by the service)."""

    def accept(
        self, peer: str, event: Event, baggage: Mapping[str, Any]
    ) -> "Deferred[AcceptResult]":
        """
        Route C{event} with the local router and enqueue all resulting jobs
        with dedupe in ONE durable transaction; fire with the first job id
        (or the existing job's id on a dedupe hit), or C{None} when nothing
        routed, or an L{Acceptance}.  Fail with
        L{ductile.errors.StorageUnavailable} when the database cannot take
        the write.
        """
        ...


def ingress_body_limit_for(
    ingress: RemoteIngress | None,
    default: int | BodyLimit,
    stats: IngressStats | None = None,
) -> BodyLimitFor:
    """
    The C{body_limit_for} for L{ductile.web.limits.DuctileSite}: requests
    below the ingress C{listen_path} get C{max_body_size} and the relay's 413
    message (C{relay payload too large}); everything else C{default}.  Each
    relay-path rejection is logged in the relay's terms and counted as
    C{payload_too_large}.
    """
    if ingress is None:
        return lambda path: default

    def on_reject(request: server.Request, size: int) -> None:
        if stats is not None:
            stats.record_rejected(admission.PAYLOAD_TOO_LARGE.reason)
        _log_rejection(
            admission.PAYLOAD_TOO_LARGE,
            peer=_claimed_peer_from_target(getattr(request.channel, "_path", b"")),
            remote=remote_address(request),
            fields={"size": size, "limit": ingress.max_body_size},
        )

    inside = BodyLimit(
        ingress.max_body_size,
        admission.PAYLOAD_TOO_LARGE.message,
        on_reject=on_reject,
    )
    return prefix_limit_for(normalise_listen_path(ingress.listen_path), inside, default)


def _claimed_peer_from_target(target: Any) -> str:
    if not isinstance(target, bytes):
        return ""
    path = target.split(b"?", 1)[0]
    return unquote_to_bytes(path.rsplit(b"/", 1)[-1]).decode("utf-8", "replace")


def _log_rejection(
    row: Row,
    *,
    peer: str,
    remote: str,
    fields: Mapping[str, Any],
    failure: Failure | None = None,
) -> None:
    """One line per rejection; with the failure (traceback) when there is one."""
    text = "relay rejected from peer {peer!r} at {remote}: {reason} ({status})"
    values = dict(
        peer=peer, remote=remote, reason=row.reason, status=row.status, error=row.message
    )
    values.update(fields)
    if failure is not None:
        log.failure(text, failure, **values)
    else:
        log.warn(text, **values)


def _header(request: server.Request, name: bytes) -> str:
    """Go's C{strings.TrimSpace(r.Header.Get(name))}."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return ""
    return values[0].decode("utf-8", "replace").strip()


def signed_path(request: server.Request) -> str:
    """
    The path the signature covers: Go's C{req.URL.Path}, i.e. the request
    path without the query, percent-decoded.
    """
    raw = request.path or b"/"
    return unquote_to_bytes(raw).decode("utf-8", "replace")


@attrs.frozen
class _Checked:
    peer: Peer
    event: Event
    baggage: Mapping[str, Any]


class RemoteIngressResource(Resource):
    """
    The leaf that answers C{POST {listen_path}/{peer}}; the peer is the last
    C{prepath} segment (see L{mount_remote_ingress}).  Only POST is
    defined; every other method gets a plain 405.
    """

    isLeaf = True

    def __init__(
        self,
        ingress: RemoteIngress,
        acceptor: Acceptor,
        clock: IReactorTime,
        stats: IngressStats,
    ) -> None:
        super().__init__()
        self._ingress = ingress
        self._acceptor = acceptor
        self._clock = clock
        self._stats = stats

    def render(self, request: server.Request) -> bytes | int:
        # Every other method is chi's plain 405 (Twisted would say 501 for
        # methods outside GET/HEAD/POST).
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            return b""
        return self.render_POST(request)

    def render_POST(self, request: server.Request) -> bytes | int:
        claimed = request.prepath[-1] if request.prepath else b""
        peer_name = claimed.decode("utf-8", "replace").strip()
        try:
            checked = self._check(request, peer_name)
        except Rejected as rejection:
            fields = dict(rejection.fields)
            failure = fields.pop("failure", None)
            return self._reject(request, peer_name, rejection.row, fields, failure)
        return self._accept(request, checked)

    # -- the checks, in contract order -------------------------------------

    def _check(self, request: server.Request, peer_name: str) -> _Checked:
        ingress = self._ingress
        peer = ingress.enabled_peer(peer_name) if peer_name else None
        if peer is None:  # 1
            raise Rejected(admission.UNKNOWN_PEER)
        header_peer = _header(request, b"x-ductile-peer")
        if header_peer != peer.name:  # 2
            raise Rejected(admission.PEER_MISMATCH, header_peer=header_peer)
        timestamp_text = _header(request, b"x-ductile-timestamp")
        if not timestamp_text:  # 3
            raise Rejected(admission.MISSING_TIMESTAMP)
        try:
            timestamp = admission.parse_timestamp_header(timestamp_text)
        except ValueError:  # 4
            raise Rejected(admission.INVALID_TIMESTAMP) from None
        admission.check_skew(  # 5
            timestamp, self._clock.seconds(), ingress.allowed_clock_skew
        )
        keys = admission.candidate_keys(  # 6, 7
            peer, _header(request, b"x-ductile-key-id"), ingress.require_key_id
        )
        signature = _header(request, b"x-ductile-signature")
        if not signature:  # 8
            raise Rejected(admission.MISSING_SIGNATURE)
        try:
            request.content.seek(0)
            body = request.content.read(ingress.max_body_size + 1)
        except Exception:  # 9
            raise Rejected(admission.BODY_READ_ERROR) from None
        if len(body) > ingress.max_body_size:  # 10
            raise Rejected(admission.PAYLOAD_TOO_LARGE, size=len(body))
        method = request.method.decode("ascii", "replace")
        path = signed_path(request)
        if not _verified(keys, method, path, timestamp_text, body, signature):  # 11
            raise Rejected(admission.BAD_SIGNATURE)
        try:
            envelope = decode_envelope(body)
        except EnvelopeError:  # 12
            raise Rejected(admission.INVALID_JSON) from None
        event_type = envelope.event_type.strip()
        if not event_type:  # 13
            raise Rejected(admission.MISSING_EVENT_TYPE)
        if not RELAY_EVENT_TYPE.fullmatch(event_type):  # 14
            raise Rejected(admission.INVALID_EVENT_TYPE)
        origin_instance = envelope.origin.instance.strip()
        if origin_instance and origin_instance != peer.name:  # 15
            raise Rejected(admission.ORIGIN_MISMATCH, origin_instance=origin_instance)
        if not admission.event_type_allowed(peer, event_type):  # 16
            raise Rejected(admission.EVENT_TYPE_NOT_ALLOWED, event_type=event_type)
        try:
            event = Event.create(
                type=event_type,
                # decode_envelope's json.loads built this object for this
                # request alone: nothing else holds it, so no copy is needed.
                payload=dict(envelope.payload),
                source=f"relay:{peer.name}",
                now=self._clock.seconds(),
                dedupe_key=admission.derive_dedupe_key(peer.name, envelope, signature),
            )
            baggage = admission.admit_baggage(envelope.baggage, peer.baggage_allow)
        except Exception:  # 17
            raise Rejected(admission.ACCEPT_ERROR, failure=Failure()) from None
        return _Checked(peer=peer, event=event, baggage=baggage)

    # -- answers -----------------------------------------------------------

    def _reject(
        self,
        request: server.Request,
        peer_name: str,
        row: Row,
        fields: Mapping[str, Any],
        failure: Failure | None = None,
    ) -> bytes:
        self._stats.record_rejected(row.reason)
        _log_rejection(
            row,
            peer=peer_name,
            remote=remote_address(request),
            fields=fields,
            failure=failure,
        )
        body = write_error(request, row.status, row.message)
        if row is admission.STORAGE_UNAVAILABLE:
            request.setHeader(b"retry-after", b"%d" % (RETRY_AFTER_SECONDS,))
        return body

    def _accept(self, request: server.Request, checked: _Checked) -> int:
        gone: list[bool] = []
        pending: list[Deferred[Any]] = []

        def connection_lost(_reason: Failure) -> None:
            gone.append(True)
            for d in pending:
                d.cancel()

        request.notifyFinish().addErrback(connection_lost)
        d = maybeDeferred(
            self._acceptor.accept, checked.peer.name, checked.event, checked.baggage
        )
        pending.append(d)
        d.addCallbacks(
            self._accepted,
            self._accept_failed,
            callbackArgs=(request, checked, gone),
            errbackArgs=(request, checked, gone),
        )
        return server.NOT_DONE_YET

    def _accepted(
        self,
        result: AcceptResult,
        request: server.Request,
        checked: _Checked,
        gone: list[bool],
    ) -> None:
        acceptance = result if isinstance(result, Acceptance) else Acceptance(result)
        self._stats.record_accepted(acceptance.deduplicated)
        remote = remote_address(request)
        log.info(
            "relay accepted {event_type} from peer {peer} at {remote}",
            peer=checked.peer.name,
            remote=remote,
            event_type=checked.event.type,
            receiver_event_id=checked.event.event_id,
            job_id=acceptance.job_id,
            deduplicated=acceptance.deduplicated,
            dedupe_key=checked.event.dedupe_key,
        )
        if gone:
            log.info(
                "relay client {remote} went away before the answer; the event is"
                " accepted and a retry will be deduplicated",
                remote=remote,
                receiver_event_id=checked.event.event_id,
            )
            return
        answer: dict[str, Any] = {
            "status": "accepted",
            "peer": checked.peer.name,
            "event_type": checked.event.type,
            "receiver_event_id": checked.event.event_id,
        }
        if acceptance.job_id:
            answer["job_id"] = acceptance.job_id
        request.write(write_json(request, 202, answer))
        request.finish()

    def _accept_failed(
        self,
        failure: Failure,
        request: server.Request,
        checked: _Checked,
        gone: list[bool],
    ) -> None:
        if gone:
            if not failure.check(CancelledError):
                log.failure(
                    "relay accept failed after the client went away (peer {peer})",
                    failure,
                    peer=checked.peer.name,
                )
            return
        fields: dict[str, Any] = {
            "event_type": checked.event.type,
            "receiver_event_id": checked.event.event_id,
        }
        if failure.check(StorageUnavailable):
            row = admission.STORAGE_UNAVAILABLE
            fields["storage_error"] = failure.getErrorMessage()
            logged_failure = None
        else:
            row = admission.ENQUEUE_FAILED
            logged_failure = failure  # logged with its traceback, never the body
        body = self._reject(request, checked.peer.name, row, fields, logged_failure)
        request.write(body)
        request.finish()

    def reconfigure(self, ingress: RemoteIngress, acceptor: Acceptor) -> None:
        """
        Take a reloaded C{remote_ingress} (peers, keys, accept lists, skew)
        and the acceptor for the reloaded router: requests checked from now
        on use them; one already being accepted finishes with the old ones.
        The listen path and body cap are fixed at start (the service keeps
        them unchanged across a reload).
        """
        self._ingress = ingress
        self._acceptor = acceptor


def _verified(
    keys: tuple[PeerKey, ...],
    method: str,
    path: str,
    timestamp: str,
    body: bytes,
    signature: str,
) -> bool:
    return any(
        verify(key.secret, method, path, timestamp, body, signature) for key in keys
    )


class _PathNode(Resource):
    """An intermediate path segment: 404 for itself, children by name."""

    def render(self, request: server.Request) -> bytes:
        return pages.notFound().render(request)


class _PeersNode(_PathNode):
    """C{{listen_path}}: every single next segment is a peer name."""

    def __init__(self, relay: RemoteIngressResource) -> None:
        super().__init__()
        self._relay = relay

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        if request.postpath:
            # A deeper path (or a trailing slash): chi's pattern matches
            # exactly one segment, so this is a plain 404.
            return pages.notFound()
        return self._relay


def mount_remote_ingress(
    root: Resource,
    ingress: RemoteIngress,
    acceptor: Acceptor,
    clock: IReactorTime,
    stats: IngressStats,
) -> RemoteIngressResource:
    """
    Mount the relay at C{ingress.listen_path + "/{peer}"} under C{root}.

    Existing children of C{root} along the path are reused; missing ones are
    created (and answer 404 themselves).  The last segment of the listen
    path is replaced by the peer dispatcher.  A listen path of C{/} puts
    the peers directly under C{root}: C{root}'s static children still win,
    every other single segment is a peer.

    @return: the relay resource (handy for tests).
    """
    relay = RemoteIngressResource(ingress, acceptor, clock, stats)
    peers = _PeersNode(relay)
    path = normalise_listen_path(ingress.listen_path)
    if path == "/":
        # Resource.getChildWithDefault consults static children first and
        # only then getChild, so this leaves the API's children alone.
        root.getChild = peers.getChild  # type: ignore[method-assign]
        return relay
    segments = [seg.encode("utf-8") for seg in path[1:].split("/")]
    node: Resource = root
    for seg in segments[:-1]:
        child = node.children.get(seg)
        if child is None:
            child = _PathNode()
            node.putChild(seg, child)
        node = child
    node.putChild(segments[-1], peers)
    return relay
