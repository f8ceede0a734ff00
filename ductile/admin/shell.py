"""
The SSH server of the manhole: public keys only, one user name (C{admin}),
a colored Python REPL over the live objects.

Built from conch's pieces rather than C{manhole_tap}, which only does
passwords.  The portal has exactly one checker (L{SSHPublicKeyChecker}), so
the server offers C{publickey} and nothing else: password and
keyboard-interactive attempts are refused without being checked.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

#: The REPL globals, or a function returning them, called for each new session.
Namespace = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]

from twisted.application import service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.interfaces import IConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.cred import portal
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from ductile.admin.keyfiles import load_authorized_keys, load_host_key
from ductile.admin.listen import manhole_endpoint

#: The only user name the manhole accepts (C{ssh admin@...}).
ADMIN_USER = b"admin"


class AdminSession(manhole_ssh.TerminalSession):
    """
    conch's terminal session, minus two C{NotImplementedError}s logged as
    errors: a window resize is passed on to the REPL, and end-of-input from
    the client (C{ssh ... < script}) closes the session.
    """

    _chained: Any = None

    def openShell(self, proto: Any) -> None:
        self._chained = self.chainedProtocolFactory()
        self.transportFactory(proto, self._chained, IConchUser(self.original),
                              self.width, self.height)

    def windowChanged(self, newWindowSize: Any) -> None:
        height, width = newWindowSize[:2]
        if self._chained is not None and self._chained.terminalProtocol is not None:
            self._chained.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self._chained is not None:
            self._chained.loseConnection()


class _AdminRealm(manhole_ssh.TerminalRealm):
    sessionFactory = AdminSession


class _AdminTransport(SSHServerTransport):
    """Tracks its connection so the service can close sessions on stop."""

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.closed: defer.Deferred[None] = defer.Deferred()
        super().connectionMade()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # A client saying goodbye (ssh exiting) is not an error worth an operator's attention.
        if reasonCode == DISCONNECT_BY_APPLICATION:
            self._log.info("manhole client disconnected: {reason}", reason=description)
        else:
            super().receiveError(reasonCode, description)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        self.closed.callback(None)


class AdminFactory(manhole_ssh.ConchFactory):
    protocol = _AdminTransport

    def __init__(self, portal: portal.Portal, host_key: keys.Key) -> None:
        super().__init__(portal)
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.connections: set[_AdminTransport] = set()


def build_manhole_factory(authorized: list[keys.Key], host_key: keys.Key, namespace: Namespace) -> AdminFactory:
    """
    The SSH factory: key-only auth for C{admin}, a C{ColoredManhole} on
    C{namespace}.  A callable namespace is called for each session, so the
    factory can be built before the objects it shows exist.
    """
    fresh: Callable[[], Mapping[str, Any]] = namespace if callable(namespace) else (lambda: namespace)
    realm = _AdminRealm()
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(manhole.ColoredManhole, dict(fresh()))
    checker = SSHPublicKeyChecker(InMemorySSHKeyDB({ADMIN_USER: list(authorized)}))
    return AdminFactory(portal.Portal(realm, [checker]), host_key)


class ManholeService(service.Service):
    """
    Listens on the manhole endpoint while running.  Stopping stops
    listening and closes the open SSH sessions, so a service stop (and a
    test) leaves nothing behind.
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: AdminFactory) -> None:
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        self._listening: defer.Deferred[Any] | None = None
        self._waiters: list[defer.Deferred[Any]] = []
        self._failure: Any = None

    def startService(self) -> None:
        super().startService()
        self._listening = endpoints.serverFromString(self._reactor, self.description).listen(self.factory)
        self._listening.addCallbacks(self._listened, self._listen_failed)

    def _listened(self, port: Any) -> None:
        self.port = port
        self._listening = None
        self.log.info("manhole listening on {where}", where=self.description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def _listen_failed(self, failure: Any) -> None:
        self._listening = None
        self._failure = failure
        self.log.error("manhole could not listen on {where}: {why}", where=self.description,
                       why=failure.getErrorMessage())
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

    def whenListening(self) -> defer.Deferred[Any]:
        """The listening port once bound (fails if binding failed)."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._failure is not None:
            return defer.fail(self._failure)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        closing = []
        for conn in list(self.factory.connections):
            closing.append(conn.closed)
            conn.transport.loseConnection()
        await defer.gatherResults(closing)


def check_manhole(manhole_config: Any) -> None:
    """
    Every check L{build_manhole_service} makes, without building anything:
    for C{twistd} option parsing and C{config check}, so a bad
    C{admin.manhole} stops the start before the reactor runs.
    """
    manhole_endpoint(manhole_config.listen, manhole_config.allow_remote)
    load_host_key(manhole_config.host_key)
    load_authorized_keys(manhole_config.authorized_keys)


def build_manhole_service(reactor: Any, manhole_config: Any, namespace: Namespace) -> ManholeService:
    """
    The manhole as an L{IService} from the C{admin.manhole} config
    (L{ductile.config.models.ManholeConfig}).  C{namespace} is the REPL's
    globals or a function returning them for each new session.

    Raises L{AdminConfigError} (with a message for the operator) before
    anything listens when the endpoint would be reachable from the network
    without C{allow_remote}, a unix socket would be open to other users, or
    the host key / authorized keys file is missing, unreadable, invalid or
    (authorized keys) empty.
    """
    description = manhole_endpoint(manhole_config.listen, manhole_config.allow_remote)
    host_key = load_host_key(manhole_config.host_key)
    authorized = load_authorized_keys(manhole_config.authorized_keys)
    return ManholeService(reactor, description, build_manhole_factory(authorized, host_key, namespace))
