"""
The newcomer's one-command demo (C{etc/demo/run}, issue 8), run as a real
process: two real C{twistd ductile} instances, real plugins, real relay.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sys

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "etc", "demo", "run")
SECRET = "demo-test-secret-5b1e0c9a77d2"
ARCHIVE = "nightly-2026-05-03.tar.zst"


class _Demo(protocol.ProcessProtocol):
    """Collects output; C{seen(text)} fires once C{text} has been printed; C{ended} with the exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def seen(self, text: str) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((text.encode(), d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self._waiting):
            if item[0] in self.output:
                self._waiting.remove(item)
                item[1].callback(None)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        for text, d in self._waiting:
            d.errback(AssertionError(f"demo ended without printing {text!r}:\n{self.text}"))
        self._waiting = []
        self.ended.callback(reason.value.exitCode)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class DemoTests(TestCase):
    timeout = 120

    def _start_demo(self, *args: str) -> _Demo:
        env = {k: v for k, v in os.environ.items() if k not in ("RELAY_LAB_V1_SECRET", "DUCTILE_EXAMPLE_DATA")}
        env["DUCTILE_DEMO_SECRET"] = SECRET
        env.setdefault("PATH", "/usr/bin:/bin")
        proto = _Demo()
        reactor.spawnProcess(proto, sys.executable, [sys.executable, DEMO, *args], env=env, path=ROOT)
        return proto

    def _work_dir(self, text: str) -> str:
        m = re.search(r"work dir: (\S+)", text)
        self.assertIsNotNone(m, text)
        return m.group(1)

    def _pids(self, text: str) -> dict[str, int]:
        pids = {m.group(1): int(m.group(2)) for m in re.finditer(r"(lab|home-primary) \(\w+\) ready: pid (\d+)", text)}
        self.assertEqual(sorted(pids), ["home-primary", "lab"], text)
        return pids

    def assertGone(self, pids: dict[str, int], text: str) -> None:
        """Neither daemon nor anything in its process group (plugins) is left."""
        for name, pid in pids.items():
            with self.assertRaises(ProcessLookupError, msg=f"{name} (pid {pid}) still running\n{text}"):
                os.kill(pid, 0)
            with self.assertRaises(ProcessLookupError, msg=f"{name}'s process group {pid} not empty\n{text}"):
                os.killpg(pid, 0)

    async def test_runs_the_seed_story_end_to_end(self) -> None:
        """
        The demo relays backup.ready with the seed's line, lab accepts it and
        runs verify then store, the archive lands with the same SHA-256, the
        relay check passes, both instances are stopped and the secret is
        never printed; exit status 0.
        """
        data_dirs = [os.path.join(ROOT, "etc", n, "data") for n in ("home-primary", "lab")]
        existed = [os.path.exists(d) for d in data_dirs]
        proto = self._start_demo("--keep")
        code = await proto.ended
        text = proto.text
        work = self._work_dir(text)
        self.addCleanup(shutil.rmtree, work, True)
        self.assertEqual(code, 0, text)

        self.assertIn("ductile relay send lab", text)
        self.assertIn("--dedupe-key backup.ready:nightly-2026-05-03", text)
        self.assertIn("--baggage '{\"trace_id\":\"tr-789\"}'", text)
        self.assertIn("the seed's /srv/backups/latest.tar.zst does not exist here", text)
        self.assertIn("Relayed backup.ready to lab", text)
        job = re.search(r"Receiver job id: (\S+)", text)
        self.assertIsNotNone(job, text)
        self.assertRegex(text, rf"verify-backup +backup-verifier +succeeded +job {job.group(1)}")
        self.assertRegex(text, r"store-backup +cold-storage-sync +succeeded +job \S+")
        self.assertIn('baggage on lab: {"trace_id": "tr-789"}', text)
        self.assertNotIn("problem", text)
        self.assertIn('ok       shared secret', text)

        archive = os.path.join(work, "data", "archives", ARCHIVE)
        stored = os.path.join(work, "data", "cold-storage", "nightly-2026-05-03", ARCHIVE)
        self.assertIn(f"archive landed: {stored}", text)
        self.assertIn("sha256 matches the sample archive", text)
        self.assertEqual(_sha256(stored), _sha256(archive))
        self.assertIn("Demo OK", text)

        self.assertNotIn(SECRET, text)
        for name in ("home-primary", "lab"):
            with open(os.path.join(work, f"{name}.log"), encoding="utf-8") as f:
                self.assertNotIn(SECRET, f.read())
            # State lives in the work dir's copies; the repository stays clean.
            self.assertTrue(os.path.exists(os.path.join(work, name, "data", "state.db")))
        self.assertEqual([os.path.exists(d) for d in data_dirs], existed)
        self.assertGone(self._pids(text), text)

    async def _interrupt(self, signame: str) -> None:
        proto = self._start_demo()
        await proto.seen("home-primary (sender) ready: pid")
        proto.transport.signalProcess(signame)
        code = await proto.ended
        text = proto.text
        self.assertEqual(code, 130, text)
        self.assertIn(f"interrupted (SIG{signame}): stopping", text)
        self.assertIn("Demo FAILED.", text)
        self.assertRegex(text, r"lab stopped \(pid \d+, on SIGTERM\)")
        self.assertFalse(os.path.exists(self._work_dir(text)), text)
        self.assertGone(self._pids(text), text)
        self.assertNotIn(SECRET, text)

    async def test_ctrl_c_stops_both_instances_and_cleans_up(self) -> None:
        """
        Ctrl-C (SIGINT) once both instances are up stops them, removes the
        work dir and exits 130.
        """
        await self._interrupt("INT")

    async def test_sigterm_stops_both_instances_and_cleans_up(self) -> None:
        """SIGTERM to the demo does the same as Ctrl-C."""
        await self._interrupt("TERM")

    async def test_without_twistd_explains_and_fails(self) -> None:
        """
        Run with a Python that has no twistd next to it (and none on PATH),
        the demo says which Python to use, starts nothing and exits 1.
        """
        if shutil.which("twistd", path="/usr/bin:/bin"):
            self.skipTest("a system-wide twistd is installed")
        bindir = os.path.abspath(self.mktemp())
        os.makedirs(bindir)
        python = os.path.join(bindir, "python3")
        os.symlink(sys.executable, python)
        proto = _Demo()
        env = {"PATH": "/usr/bin:/bin", "HOME": bindir, "DUCTILE_DEMO_SECRET": SECRET}
        reactor.spawnProcess(proto, python, [python, DEMO], env=env, path=ROOT)
        code = await proto.ended
        text = proto.text
        self.assertEqual(code, 1, text)
        self.assertIn(f"demo failed: twistd not found next to {python} or on PATH; run this script with the "
                      "Python of the environment ductile is installed in", text)
        self.assertNotIn("ready: pid", text)
        self.assertFalse(os.path.exists(self._work_dir(text)), text)
