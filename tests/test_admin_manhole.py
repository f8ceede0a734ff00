"""
The manhole admin shell: config refusals, key files, the namespace helpers,
and real SSH handshakes over loopback TCP and a unix socket with conch's
client (an authorized key gets a REPL; another key, another user name and
a password are refused).
"""
from __future__ import annotations

import os
import re
import stat
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import channel, common, connection, keys, session, transport, userauth
from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from ductile.admin import (
    HELP_TEXT,
    AdminConfigError,
    admin_namespace,
    build_manhole_service,
    check_manhole,
    load_authorized_keys,
    load_host_key,
    manhole_endpoint,
)
from ductile.config.models import ManholeConfig
from ductile.queue import JobSpec
from ductile.testing.db import make_queue

TIMEOUT = 5.0
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[78=>]")


def _private_openssh(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _public_openssh(key: ed25519.Ed25519PrivateKey, comment: bytes = b"") -> bytes:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (b" " + comment if comment else b"")


class KeyFiles:
    """A host key, an admin key (authorized) and a stranger key, written as OpenSSH files."""

    def __init__(self, base: str) -> None:
        os.makedirs(base, exist_ok=True)
        self.base = base
        host, admin, stranger = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
        self.host_key = self.write("host_key", _private_openssh(host))
        self.authorized_keys = self.write(
            "authorized_keys", b"# operators\n\n" + _public_openssh(admin, b"ops@example") + b"\n"
        )
        self.host_public = keys.Key.fromString(_public_openssh(host))
        self.admin = keys.Key.fromString(_private_openssh(admin))
        self.stranger = keys.Key.fromString(_private_openssh(stranger))
        self.stranger_public_line = _public_openssh(stranger)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.base, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def config(self, listen: str = "tcp:0:interface=127.0.0.1", **kw: Any) -> ManholeConfig:
        values = {"host_key": self.host_key, "authorized_keys": self.authorized_keys, **kw}
        return ManholeConfig(listen=listen, **values)


# -- a small conch SSH client ------------------------------------------------


class _Shell(channel.SSHChannel):
    """A session channel asking for a pty and a shell, collecting what it prints."""

    name = b"session"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.done: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[re.Pattern[bytes], defer.Deferred[bytes]]] = []

    def channelOpen(self, data: bytes) -> None:
        pty = session.packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.chainDeferred(self.ready)

    def closed(self) -> None:
        super().closed()
        self.done.callback(None)

    def openFailed(self, reason: Any) -> None:
        self.ready.errback(reason)

    def text(self) -> bytes:
        return _ANSI.sub(b"", self.output)

    def dataReceived(self, data: bytes) -> None:
        self.output += data
        for item in list(self._waiting):
            if item[0].search(self.text()):
                self._waiting.remove(item)
                item[1].callback(self.text())

    def wait_for(self, pattern: bytes) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        rx = re.compile(pattern, re.S)
        if rx.search(self.text()):
            d.callback(self.text())
        else:
            self._waiting.append((rx, d))
        return d.addTimeout(TIMEOUT, reactor)


class _Connection(connection.SSHConnection):
    def __init__(self) -> None:
        super().__init__()
        self.shell = _Shell(conn=self)

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(self.shell)


class _Auth(userauth.SSHUserAuthClient):
    """Public key auth with one key (offered once), or a bare password attempt."""

    def __init__(self, user: bytes, conn: Any, key: keys.Key | None = None, password: bytes | None = None) -> None:
        super().__init__(user, conn)
        self.key = key
        self.password = password
        self.offered: list[bytes] = []

    def serviceStarted(self) -> None:
        if self.password is not None:
            # Straight to a password attempt, whatever the server lists.
            self.authenticatedWith, self.triedPublicKeys, self.lastPublicKey = [], [], None
            self.askForAuth(b"password", b"\x00" + common.NS(self.password))
        else:
            super().serviceStarted()

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        methods, _ = common.getNS(packet)
        self.offered.append(methods)
        if self.password is not None:
            self.transport.loseConnection()
            return None
        return super().ssh_USERAUTH_FAILURE(packet)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.transport.authenticated = True
        super().ssh_USERAUTH_SUCCESS(packet)

    def getPublicKey(self) -> keys.Key | None:
        key, self.key = self.key, None
        self._private = key
        return key.public() if key is not None else None

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self._private)


class _Client(transport.SSHClientTransport):
    def __init__(self, host_key: keys.Key, auth: _Auth) -> None:
        self.expected_host_key = host_key
        self.auth = auth
        self.authenticated = False
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.disconnect_reason: bytes = b""

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if keys.Key.fromString(hostKey) == self.expected_host_key:
            return defer.succeed(True)
        return defer.fail(Exception("host key mismatch"))

    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect_reason = description

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


# -- tests ---------------------------------------------------------------------


class ListenPolicyTests(unittest.SynchronousTestCase):
    def test_loopback_forms_accepted(self) -> None:
        self.assertEqual(manhole_endpoint("tcp:2222:interface=127.0.0.1", False), "tcp:2222:interface=127.0.0.1")
        self.assertEqual(manhole_endpoint("127.0.0.1:2222", False), "tcp:2222:interface=127.0.0.1")
        self.assertEqual(manhole_endpoint("127.1.2.3:2222", False), "tcp:2222:interface=127.1.2.3")
        self.assertEqual(manhole_endpoint("[::1]:2222", False), r"tcp:2222:interface=\:\:1")
        self.assertEqual(manhole_endpoint("localhost:2222", False), "tcp:2222:interface=localhost")
        self.assertEqual(manhole_endpoint(r"tcp6:2222:interface=\:\:1", False), r"tcp6:2222:interface=\:\:1")
        self.assertEqual(manhole_endpoint("tcp:2222:127.0.0.1", False), "tcp:2222:127.0.0.1")

    def test_non_loopback_refused(self) -> None:
        for listen in ("10.0.0.5:2222", "tcp:2222:interface=0.0.0.0", "tcp:2222:interface=192.168.1.2",
                       "0.0.0.0:2222", "[::]:2222"):
            e = self.assertRaises(AdminConfigError, manhole_endpoint, listen, False)
            self.assertIn(f"admin.manhole.listen {listen!r} would listen on", str(e))
            self.assertIn("allow_remote: true", str(e))

    def test_no_interface_means_all_interfaces(self) -> None:
        for listen in ("tcp:2222", ":2222", "tcp6:2222"):
            e = self.assertRaises(AdminConfigError, manhole_endpoint, listen, False)
            self.assertIn("would listen on all interfaces, reachable from the network", str(e))

    def test_allow_remote_lifts_the_refusal(self) -> None:
        self.assertEqual(manhole_endpoint("tcp:2222", True), "tcp:2222")
        self.assertEqual(manhole_endpoint("10.0.0.5:2222", True), "tcp:2222:interface=10.0.0.5")

    def test_unix_socket_gets_mode_600(self) -> None:
        self.assertEqual(manhole_endpoint("unix:/run/d/admin.sock", False), "unix:/run/d/admin.sock:mode=600")
        self.assertEqual(
            manhole_endpoint("unix:/run/d/admin.sock:mode=600:lockfile=1", False),
            "unix:/run/d/admin.sock:mode=600:lockfile=1",
        )

    def test_unix_socket_open_to_others_refused(self) -> None:
        for listen in ("unix:/run/d/admin.sock:mode=660", "unix:/run/d/admin.sock:mode=666:lockfile=1",
                       "unix:/run/d/admin.sock:666"):
            e = self.assertRaises(AdminConfigError, manhole_endpoint, listen, True)
            self.assertIn("lets other users reach the admin socket; use mode=600", str(e))
        e = self.assertRaises(AdminConfigError, manhole_endpoint, "unix:/x.sock:mode=rw", False)
        self.assertIn("mode 'rw' is not an octal file mode", str(e))

    def test_other_endpoint_types_refused(self) -> None:
        for listen in ("ssl:2222:privateKey=k.pem", "systemd:domain=INET:index=0", "stdio:"):
            e = self.assertRaises(AdminConfigError, manhole_endpoint, listen, True)
            self.assertIn("only tcp:, tcp6:, unix: endpoints or host:port are supported", str(e))

    def test_malformed(self) -> None:
        e = self.assertRaises(AdminConfigError, manhole_endpoint, "tcp:ssh:interface=127.0.0.1", False)
        self.assertIn("port 'ssh' is not a TCP port number", str(e))
        e = self.assertRaises(AdminConfigError, manhole_endpoint, "  ", False)
        self.assertIn("admin.manhole.listen is empty", str(e))
        e = self.assertRaises(AdminConfigError, manhole_endpoint, "unix:", False)
        self.assertIn("the unix socket path is missing", str(e))


class KeyFileTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.files = KeyFiles(self.mktemp())

    def test_loads_keys(self) -> None:
        self.assertEqual(load_host_key(self.files.host_key).public(), self.files.host_public)
        self.assertEqual(load_authorized_keys(self.files.authorized_keys), [self.files.admin.public()])

    def test_rsa_host_key_and_several_authorized_keys(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = self.files.write("rsa_host", rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        self.assertEqual(load_host_key(path).type(), "RSA")
        two = self.files.write("two", _public_openssh(ed25519.Ed25519PrivateKey.generate()) + b"\n  \n"
                               + self.files.stranger_public_line + b" a comment with spaces\n")
        self.assertEqual(len(load_authorized_keys(two)), 2)

    def test_missing_files_named(self) -> None:
        missing = os.path.join(self.files.base, "nope")
        e = self.assertRaises(AdminConfigError, load_host_key, missing)
        self.assertEqual(str(e), f"admin.manhole.host_key: {missing} does not exist")
        e = self.assertRaises(AdminConfigError, load_authorized_keys, missing)
        self.assertEqual(str(e), f"admin.manhole.authorized_keys: {missing} does not exist")
        e = self.assertRaises(AdminConfigError, load_host_key, "")
        self.assertEqual(str(e), "admin.manhole.host_key is not set")

    def test_directory_instead_of_file(self) -> None:
        e = self.assertRaises(AdminConfigError, load_authorized_keys, self.files.base)
        self.assertEqual(str(e), f"admin.manhole.authorized_keys: cannot read {self.files.base}: Is a directory")

    def test_invalid_host_key(self) -> None:
        path = self.files.write("junk", b"not a key\n")
        e = self.assertRaises(AdminConfigError, load_host_key, path)
        self.assertIn(f"admin.manhole.host_key: {path} is not a private SSH key", str(e))
        pub = self.files.write("host_key.pub", self.files.stranger_public_line + b"\n")
        e = self.assertRaises(AdminConfigError, load_host_key, pub)
        self.assertIn("holds a public key; give the private key file", str(e))

    def test_encrypted_host_key(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        path = self.files.write("enc", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"pw")))
        e = self.assertRaises(AdminConfigError, load_host_key, path)
        self.assertIn(f"admin.manhole.host_key: {path} is passphrase-protected", str(e))

    def test_empty_authorized_keys(self) -> None:
        path = self.files.write("empty", b"# nobody yet\n\n")
        e = self.assertRaises(AdminConfigError, load_authorized_keys, path)
        self.assertIn(f"admin.manhole.authorized_keys: {path} holds no key", str(e))

    def test_options_prefix_refused(self) -> None:
        path = self.files.write("opts", b"# x\n" + b'from="10.0.0.1",no-pty ' + self.files.stranger_public_line + b"\n")
        e = self.assertRaises(AdminConfigError, load_authorized_keys, path)
        self.assertIn(f"{path} line 2: key options", str(e))
        self.assertIn("are not supported; remove everything before the key type", str(e))

    def test_garbage_line_refused(self) -> None:
        path = self.files.write("bad", b"hello world\n")
        e = self.assertRaises(AdminConfigError, load_authorized_keys, path)
        self.assertIn(f"{path} line 1: not an OpenSSH public key", str(e))
        path = self.files.write("bad2", b"ssh-ed25519 AAAAnotbase64!!\n")
        e = self.assertRaises(AdminConfigError, load_authorized_keys, path)
        self.assertIn(f"{path} line 1: cannot parse the ssh-ed25519 key", str(e))

    def test_check_manhole(self) -> None:
        check_manhole(self.files.config())
        e = self.assertRaises(AdminConfigError, check_manhole, self.files.config("10.1.1.1:2222"))
        self.assertIn("interface 10.1.1.1, reachable from the network", str(e))
        e = self.assertRaises(AdminConfigError, check_manhole, self.files.config(authorized_keys=self.files.host_key))
        self.assertIn("line 1: not an OpenSSH public key", str(e))

    def test_build_refuses_before_listening(self) -> None:
        clock = task.Clock()
        e = self.assertRaises(AdminConfigError, build_manhole_service, clock, self.files.config("tcp:2222"), {})
        self.assertIn("all interfaces", str(e))
        empty = self.files.write("empty", b"")
        e = self.assertRaises(AdminConfigError, build_manhole_service, clock,
                              self.files.config(authorized_keys=empty), {})
        self.assertIn("holds no key", str(e))
        e = self.assertRaises(AdminConfigError, build_manhole_service, clock,
                              self.files.config(host_key=empty + ".missing"), {})
        self.assertIn("does not exist", str(e))


class _FakeService:
    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.config = "CONFIG"
        self.pool = "POOL"
        self.reactor = reactor
        self.dispatcher = self.runner = self.sender = self.ingress_stats = None

        class Instance:
            router = "ROUTER"
            plugins = {"echo": "PLUGIN"}

        self.instance = Instance()


class NamespaceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.queue, self.pool, _ = make_queue(self, reactor)

    def test_live_objects(self) -> None:
        svc = _FakeService(self.queue)
        ns = admin_namespace(svc)
        self.assertIs(ns["service"], svc)
        self.assertIs(ns["queue"], self.queue)
        self.assertEqual((ns["config"], ns["pool"], ns["router"], ns["plugins"]),
                         ("CONFIG", "POOL", "ROUTER", {"echo": "PLUGIN"}))
        for name in ("dispatcher", "runner", "sender", "reactor", "ingress_stats",
                     "jobs", "job", "deliveries", "replay", "help"):
            self.assertIn(name, ns)
            self.assertIn(name, HELP_TEXT)

    async def test_helpers(self) -> None:
        ns = admin_namespace(_FakeService(self.queue))
        [plain] = await self.queue.enqueue([JobSpec(plugin="echo", command="poll", payload={"n": 1})])
        [relay] = await self.queue.enqueue([JobSpec(
            plugin="core.relay", command="send",
            payload={"relay": {"to": "bob", "event_type": "thing.happened"}}, max_attempts=1)])
        table = await ns["jobs"]()
        self.assertEqual({row["id"] for row in table}, {plain.job_id, relay.job_id})
        self.assertIn(plain.job_id, repr(table))
        self.assertIn("plugin", repr(table).splitlines()[1])
        self.assertEqual(repr(await ns["jobs"](status="dead")), "(none)")
        record = await ns["job"](relay.job_id)
        self.assertEqual(record["relay_attempts"], [])
        self.assertIn('"plugin": "core.relay"', repr(record))
        deliveries = await ns["deliveries"]()
        self.assertEqual([(r["id"], r["to"], r["event_type"]) for r in deliveries],
                         [(relay.job_id, "bob", "thing.happened")])
        with self.assertRaises(KeyError):
            await ns["job"]("nope")
        with self.assertRaises(ValueError) as cm:
            await ns["replay"](relay.job_id)
        self.assertIn("only failed, timed_out or dead jobs can be replayed", str(cm.exception))

    def test_helpers_before_the_queue_opens(self) -> None:
        svc = _FakeService(None)
        e = self.assertRaises(RuntimeError, admin_namespace(svc)["jobs"])
        self.assertIn("the job queue is not open yet", str(e))


class SSHTests(unittest.TestCase):
    """Real handshakes against the manhole on loopback."""

    def setUp(self) -> None:
        self.files = KeyFiles(self.mktemp())

    async def start(self, config: ManholeConfig, namespace: Any = None) -> Any:
        svc = build_manhole_service(reactor, config, namespace or {})
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc, await svc.whenListening()

    async def connect(self, port: Any, auth: _Auth) -> _Client:
        client = _Client(self.files.host_public, auth)
        host = port.getHost()
        if hasattr(host, "port"):
            ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", host.port, timeout=TIMEOUT)
        else:
            ep = endpoints.UNIXClientEndpoint(reactor, host.name, timeout=TIMEOUT)
        await endpoints.connectProtocol(ep, client)
        return client

    async def refused(self, port: Any, user: bytes, key: keys.Key | None = None,
                      password: bytes | None = None) -> _Auth:
        conn = _Connection()
        auth = _Auth(user, conn, key=key, password=password)
        client = await self.connect(port, auth)
        await client.lost.addTimeout(TIMEOUT, reactor)
        self.assertFalse(client.authenticated)
        return auth

    async def test_authorized_key_gets_a_repl(self) -> None:
        queue, _, _ = make_queue(self, reactor)
        [queued] = await queue.enqueue([JobSpec(plugin="echo", command="poll", payload={})])
        fake = _FakeService(None)
        # A callable namespace is resolved per session: the queue opened after the build is seen.
        svc, port = await self.start(self.files.config(), lambda: admin_namespace(fake))
        fake.queue = queue
        conn = _Connection()
        client = await self.connect(port, _Auth(b"admin", conn, key=self.files.admin))
        try:
            await conn.shell.ready.addTimeout(TIMEOUT, reactor)
            self.assertTrue(client.authenticated)
            await conn.shell.wait_for(rb">>> ")
            conn.shell.write(b"1 + 41\r")
            await conn.shell.wait_for(rb"\n42\r?\n")
            conn.shell.write(b"jobs()\r")
            out = await conn.shell.wait_for(rb"Deferred #0 called back: \r?\n.*" + queued.job_id.encode())
            self.assertIn(b"queued", out.split(b"Deferred #0 called back")[1])
        finally:
            client.loseConnection()
            await client.lost

    async def test_unknown_key_refused(self) -> None:
        _, port = await self.start(self.files.config())
        auth = await self.refused(port, b"admin", key=self.files.stranger)
        self.assertEqual(auth.offered[-1], b"publickey")

    async def test_other_user_name_refused_with_the_right_key(self) -> None:
        _, port = await self.start(self.files.config())
        await self.refused(port, b"root", key=self.files.admin)

    async def test_password_refused_and_not_offered(self) -> None:
        _, port = await self.start(self.files.config())
        auth = await self.refused(port, b"admin", password=b"hunter2")
        self.assertEqual(auth.offered, [b"publickey"])

    async def test_unix_socket_is_owner_only_and_works(self) -> None:
        path = os.path.join(self.files.base, "admin.sock")
        svc, port = await self.start(self.files.config(f"unix:{path}"), {"answer": 42})
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        conn = _Connection()
        client = await self.connect(port, _Auth(b"admin", conn, key=self.files.admin))
        try:
            await conn.shell.ready.addTimeout(TIMEOUT, reactor)
            await conn.shell.wait_for(rb">>> ")
            # A resize and end-of-input are handled (conch's own session raises NotImplementedError).
            conn.sendRequest(conn.shell, b"window-change", struct.pack(">4L", 120, 40, 0, 0))
            conn.shell.write(b"answer\r")
            await conn.shell.wait_for(rb"\n42\r?\n")
            conn.sendEOF(conn.shell)
            await conn.shell.done.addTimeout(TIMEOUT, reactor)
        finally:
            client.loseConnection()
            await client.lost

    async def test_stop_closes_open_sessions(self) -> None:
        svc, port = await self.start(self.files.config())
        conn = _Connection()
        client = await self.connect(port, _Auth(b"admin", conn, key=self.files.admin))
        await conn.shell.ready.addTimeout(TIMEOUT, reactor)
        await svc.stopService()
        await client.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(svc.factory.connections, set())
