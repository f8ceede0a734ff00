"""
The daemon as users run it: a real C{twistd ductile} process.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import treq
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from ductile.testing.instance import write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class _Twistd(protocol.ProcessProtocol):
    """Collects output; fires C{ready} on a marker line and C{ended} on exit."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.output = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        #: Fires with C{(exit code, signal)}.
        self.ended: defer.Deferred[tuple] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.marker in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError("twistd exited before it was ready:\n" + self.output.decode()))
        self.ended.callback((reason.value.exitCode, getattr(reason.value, "signal", None)))


class TwistdTests(TestCase):
    timeout = 60

    def _spawn(self, config_dir: str, marker: bytes, twistd_args: tuple[str, ...] = ()) -> _Twistd:
        proto = _Twistd(marker)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": self.home,
               "RELAY_SECRET": "twistd-test-secret-1d0e"}
        reactor.spawnProcess(
            proto, TWISTD, [TWISTD, "-n", "--pidfile=", *twistd_args, "ductile", "--config", config_dir], env=env,
            path=self.home,
        )
        return proto

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.home, "plugins"))

    def _config(self, name: str = "cfg") -> str:
        return write_config(os.path.join(self.home, name), {
            "config.yaml": {
                "service": {"name": "lab"},
                "plugin_roots": ["../plugins"],
                "api": {"enabled": True, "listen": "127.0.0.1:0"},
                "tokens": [{"name": "relay", "key": "${RELAY_SECRET}"}],
                "remote_ingress": {"peers": [{"name": "home-primary", "secret_ref": "relay"}]},
            },
        })

    async def test_second_instance_on_same_state_refused(self) -> None:
        """A second twistd on the same state database exits 1 naming the first's pid."""
        cfg = self._config()
        first = self._spawn(cfg, b"lab started:")
        await first.ready
        second = self._spawn(cfg, b"\x00never")
        second.ready.addErrback(lambda _: None)
        code, _ = await second.ended
        self.assertEqual(code, 1)
        self.assertIn(f"another ductile instance (pid {first.transport.pid})".encode(), second.output)
        os.kill(first.transport.pid, signal.SIGTERM)
        await first.ended

    async def test_start_failure_exits_1(self) -> None:
        """
        When the instance cannot start (its port is taken), twistd exits 1 so
        a supervisor sees the failure.
        """
        from twisted.internet.protocol import Factory

        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        cfg = write_config(os.path.join(self.home, "busy"), {"config.yaml": {
            "service": {"name": "lab"}, "plugin_roots": ["../plugins"],
            "api": {"enabled": True, "listen": f"127.0.0.1:{taken.getHost().port}"},
        }})
        proto = self._spawn(cfg, b"\x00never")
        proto.ready.addErrback(lambda _: None)
        code, _ = await proto.ended
        self.assertEqual(code, 1, proto.output.decode())
        self.assertIn(b"ductile failed to start", proto.output)

    async def test_json_logs(self) -> None:
        """--logger=ductile.logging.json_observer writes one JSON object per line."""
        proto = self._spawn(self._config(), b"started:", ("--logger=ductile.logging.json_observer",))
        await proto.ready
        os.kill(proto.transport.pid, signal.SIGTERM)
        await proto.ended
        records = [json.loads(line) for line in proto.output.decode().splitlines() if line.startswith("{")]
        started = [r for r in records if r.get("log_format", "").startswith("{service} started")]
        self.assertEqual(len(started), 1)
        self.assertEqual(started[0]["service"], "lab")
        self.assertEqual(started[0]["log_level"]["name"], "info")

    async def test_starts_serves_and_stops_cleanly(self) -> None:
        """
        C{twistd -n ductile --config DIR} serves /healthz and the relay route,
        and SIGTERM stops it with exit code 0 after a clean shutdown.
        """
        cfg = self._config()
        proto = self._spawn(cfg, b"lab started:")
        await proto.ready
        port = self._port(proto.output)
        response = await treq.get(f"http://127.0.0.1:{port}/healthz", persistent=False)
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["status"], body["service"]), (200, "ok", "lab"))
        response = await treq.post(f"http://127.0.0.1:{port}/ingest/peer/stranger", data=b"{}", persistent=False)
        self.assertEqual((response.code, json.loads(await response.content())), (403, {"error": "unknown relay peer"}))
        os.kill(proto.transport.pid, signal.SIGTERM)
        # twistd re-raises the signal that stopped it once shutdown is done,
        # so the exit status says "terminated by SIGTERM" (what systemd expects).
        self.assertIn(await proto.ended, [(0, None), (None, signal.SIGTERM)], proto.output.decode())
        self.assertIn(b"lab stopped", proto.output)
        self.assertNotIn(b"twistd-test-secret-1d0e", proto.output)
        self.assertTrue(os.path.exists(os.path.join(cfg, "data", "state.db")))

    @staticmethod
    def _port(output: bytes) -> int:
        for line in output.decode().splitlines():
            if "DuctileSite starting on" in line:
                return int(line.rsplit(" ", 1)[1])
        raise AssertionError("no listening line in:\n" + output.decode())

    async def test_bad_config_exits_with_message(self) -> None:
        """
        A bad config stops twistd with a non-zero exit and the loader's
        message naming file, key and expectation — not a traceback.
        """
        cfg = write_config(os.path.join(self.home, "bad"), {
            "config.yaml": {"service": {"name": "lab", "tick_interval": "soon"}, "plugin_roots": ["../plugins"]},
        })
        proto = self._spawn(cfg, b"\x00never")
        proto.ready.addErrback(lambda _: None)
        code, _ = await proto.ended
        text = proto.output.decode()
        self.assertEqual(code, 1)
        self.assertIn("config.yaml", text)
        self.assertIn("service.tick_interval", text)
        self.assertNotIn("Traceback", text)
