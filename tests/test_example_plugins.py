"""
The example plugins in C{etc/plugins/} (issue 8): discovered as an instance
would discover them and run as real subprocesses through
L{ductile.plugins.runner.ProcessRunner}, so what is tested is what the demo
and a plugin author's copy would actually do.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.config.models import PluginConfig
from ductile.plugins.discovery import discover
from ductile.plugins.manifest import Plugin
from ductile.plugins.protocol import PluginResponse, build_request
from ductile.plugins.runner import ProcessRunner, RunOutcome

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_ROOT = os.path.join(os.path.dirname(HERE), "etc", "plugins")
NAMES = ("backup-runner", "backup-verifier", "cold-storage-sync")

# Discovery only loads plugins whose required config keys are set.
SETTINGS = {
    "backup-runner": PluginConfig(name="backup-runner", config={"archive_dir": "/unused"}),
    "cold-storage-sync": PluginConfig(name="cold-storage-sync", config={"destination_dir": "/unused"}),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: str, data: bytes, mtime: float | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


class DiscoveryTests(SynchronousTestCase):
    def test_all_three_load_without_problems(self) -> None:
        found = discover([PLUGIN_ROOT], plugin_configs=SETTINGS)
        self.assertEqual(found.problems, ())
        self.assertEqual(found.warnings, ())
        self.assertEqual(sorted(found.plugins), sorted(NAMES))
        self.assertEqual(sorted(found.plugins["backup-runner"].commands), ["health", "poll"])
        self.assertEqual(sorted(found.plugins["backup-verifier"].commands), ["handle", "health"])
        self.assertEqual(sorted(found.plugins["cold-storage-sync"].commands), ["handle", "health"])

    def test_required_config_keys_are_declared(self) -> None:
        found = discover([PLUGIN_ROOT])
        self.assertEqual(sorted(found.plugins), ["backup-verifier"])
        text = "\n".join(found.problems)
        self.assertIn("missing required config keys: archive_dir", text)
        self.assertIn("missing required config keys: destination_dir", text)

    def test_entrypoints_are_executable_python_scripts(self) -> None:
        for name in NAMES:
            path = os.path.join(PLUGIN_ROOT, name, "run.py")
            self.assertTrue(os.access(path, os.X_OK), path)
            with open(path) as f:
                self.assertEqual(f.readline(), "#!/usr/bin/env python3\n", path)
            self.assertFalse(os.stat(os.path.dirname(path)).st_mode & 0o002, path)


class PluginRunTestCase(TestCase):
    """Runs the real plugins on the real reactor."""

    def setUp(self) -> None:
        self.plugins: Mapping[str, Plugin] = discover([PLUGIN_ROOT], plugin_configs=SETTINGS).plugins
        self.runner = ProcessRunner(reactor)
        self.addCleanup(self.runner.shutdown)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    async def run_plugin(
        self, name: str, command: str, config: Mapping[str, Any],
        state: Mapping[str, Any] | None = None, event_payload: Mapping[str, Any] | None = None,
    ) -> RunOutcome:
        event = None
        if command == "handle":
            event = {"type": "backup.ready", "payload": dict(event_payload or {}), "source": "test",
                     "event_id": str(uuid.uuid4()), "timestamp": "2026-05-03T01:00:00Z"}
        request = build_request(
            job_id=str(uuid.uuid4()), command=command, config=config, state=state,
            payload=event, context={"ductile_plugin": name}, event=event,
            deadline_at="2026-05-03T01:01:00Z",
        )
        return await self.runner.run(self.plugins[name], request, 30.0)

    def response(self, outcome: RunOutcome) -> PluginResponse:
        """The validated response; the run must have produced one."""
        self.assertIsNotNone(outcome.response, f"{outcome.error}\nstderr: {outcome.stderr_tail}")
        assert outcome.response is not None
        self.assertEqual(outcome.exit_code, 0)
        return outcome.response


class BackupRunnerTests(PluginRunTestCase):
    def config(self) -> dict[str, str]:
        return {"archive_dir": os.path.join(self.base, "archives")}

    async def test_announces_the_newest_archive_once(self) -> None:
        archives = self.config()["archive_dir"]
        write(os.path.join(archives, "nightly-2026-05-01.tar.gz"), b"old", mtime=1_000_000)
        newest = write(os.path.join(archives, "nightly-2026-05-03.tar.zst"), b"newest bytes", mtime=3_000_000)
        write(os.path.join(archives, "nightly-2026-05-02.zip"), b"middle", mtime=2_000_000)
        write(os.path.join(archives, "notes.txt"), b"not an archive", mtime=9_000_000)
        write(os.path.join(archives, ".partial.tar.zst"), b"being written", mtime=9_000_000)

        first = self.response(await self.run_plugin("backup-runner", "poll", self.config()))
        self.assertEqual(first.status, "ok")
        self.assertEqual(first.result, "announced nightly-2026-05-03 (12 bytes)")
        self.assertEqual(list(first.events), [{
            "type": "backup.ready",
            "payload": {"archive_path": newest, "archive_id": "nightly-2026-05-03",
                        "size_bytes": 12, "sha256": sha256(b"newest bytes")},
            "dedupe_key": "backup.ready:nightly-2026-05-03",
        }])
        self.assertEqual(first.state_updates, {"last_archive_id": "nightly-2026-05-03"})

        second = self.response(await self.run_plugin(
            "backup-runner", "poll", self.config(), state=first.state_updates))
        self.assertEqual(second.status, "ok")
        self.assertEqual(second.result, "no new archive (nightly-2026-05-03 was already announced)")
        self.assertEqual(second.events, ())
        self.assertIsNone(second.state_updates)

        newer = write(os.path.join(archives, "nightly-2026-05-04.tgz"), b"newer", mtime=4_000_000)
        third = self.response(await self.run_plugin(
            "backup-runner", "poll", self.config(), state=first.state_updates))
        self.assertEqual([e["payload"]["archive_path"] for e in third.events], [newer])
        self.assertEqual(third.events[0]["payload"]["archive_id"], "nightly-2026-05-04")
        self.assertEqual(third.state_updates, {"last_archive_id": "nightly-2026-05-04"})

    async def test_empty_directory_is_not_an_error(self) -> None:
        os.makedirs(self.config()["archive_dir"])
        r = self.response(await self.run_plugin("backup-runner", "poll", self.config()))
        self.assertEqual((r.status, r.events), ("ok", ()))
        self.assertEqual(r.result, f"no archives found in {self.config()['archive_dir']}")

    async def test_missing_directory_is_not_an_error(self) -> None:
        r = self.response(await self.run_plugin("backup-runner", "poll", self.config()))
        self.assertEqual((r.status, r.events), ("ok", ()))
        self.assertEqual(r.result, f"no archives found: {self.config()['archive_dir']} does not exist")

    async def test_unreadable_directory_is_an_error(self) -> None:
        not_a_dir = write(os.path.join(self.base, "file"), b"x")
        r = self.response(await self.run_plugin("backup-runner", "poll", {"archive_dir": not_a_dir}))
        self.assertEqual(r.status, "error")
        self.assertEqual(r.error, f"cannot read archive_dir {not_a_dir}: Not a directory")
        self.assertFalse(r.retry)

    async def test_relative_archive_dir_is_refused(self) -> None:
        r = self.response(await self.run_plugin("backup-runner", "poll", {"archive_dir": "data/archives"}))
        self.assertEqual(r.status, "error")
        self.assertIn("config archive_dir must be an absolute path, got 'data/archives'", r.error)
        self.assertFalse(r.retry)

    async def test_health(self) -> None:
        write(os.path.join(self.config()["archive_dir"], "a.tar"), b"x")
        r = self.response(await self.run_plugin("backup-runner", "health", self.config()))
        self.assertEqual((r.status, r.result), ("ok", f"healthy; 1 archive(s) in {self.config()['archive_dir']}"))


class BackupVerifierTests(PluginRunTestCase):
    def archive(self, data: bytes = b"archive bytes") -> str:
        return write(os.path.join(self.base, "nightly-2026-05-03.tar.zst"), data)

    async def test_verified(self) -> None:
        path = self.archive()
        digest = sha256(b"archive bytes")
        payload = {"archive_path": path, "archive_id": "nightly-2026-05-03", "size_bytes": 13,
                   "sha256": digest, "trace_id": "tr-1", "result": "announced", "ductile_step_id": "x"}
        r = self.response(await self.run_plugin("backup-verifier", "handle", {}, event_payload=payload))
        self.assertEqual(r.status, "ok")
        self.assertEqual(r.result, f"verified nightly-2026-05-03 (13 bytes, sha256 {digest})")
        [event] = r.events
        self.assertEqual(event["type"], "backup.verified")
        self.assertEqual(event["dedupe_key"], "backup.verified:nightly-2026-05-03")
        verified_at = event["payload"].pop("verified_at")
        self.assertRegex(verified_at, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        # Passed through, minus what the runtime added (ductile_*, result).
        self.assertEqual(event["payload"], {"archive_path": path, "archive_id": "nightly-2026-05-03",
                                            "size_bytes": 13, "sha256": digest, "trace_id": "tr-1"})

    async def test_without_expected_digest_it_computes_one(self) -> None:
        path = self.archive()
        r = self.response(await self.run_plugin(
            "backup-verifier", "handle", {}, event_payload={"archive_path": path, "archive_id": "n"}))
        self.assertEqual(r.status, "ok")
        self.assertEqual(r.events[0]["payload"]["sha256"], sha256(b"archive bytes"))

    async def test_checksum_mismatch_is_not_retried(self) -> None:
        path = self.archive(b"tampered")
        wrong = sha256(b"archive bytes")
        r = self.response(await self.run_plugin(
            "backup-verifier", "handle", {}, event_payload={"archive_path": path, "sha256": wrong}))
        self.assertEqual(r.status, "error")
        self.assertEqual(
            r.error, f"checksum mismatch for {path}: expected sha256 {wrong}, got {sha256(b'tampered')}")
        self.assertFalse(r.retry)
        self.assertEqual(r.events, ())

    async def test_missing_file_is_retried(self) -> None:
        path = os.path.join(self.base, "gone.tar.zst")
        r = self.response(await self.run_plugin(
            "backup-verifier", "handle", {}, event_payload={"archive_path": path}))
        self.assertEqual(r.status, "error")
        self.assertEqual(r.error, f"archive not found: {path} (will retry in case it is still arriving, "
                                  "e.g. on a network filesystem)")
        self.assertTrue(r.retry)

    async def test_empty_file_is_refused(self) -> None:
        path = self.archive(b"")
        r = self.response(await self.run_plugin(
            "backup-verifier", "handle", {}, event_payload={"archive_path": path}))
        self.assertEqual((r.status, r.error, r.retry), ("error", f"archive {path} is empty", False))

    async def test_directory_is_refused(self) -> None:
        r = self.response(await self.run_plugin(
            "backup-verifier", "handle", {}, event_payload={"archive_path": self.base}))
        self.assertEqual((r.status, r.error, r.retry),
                         ("error", f"archive {self.base} is not a regular file", False))

    async def test_missing_archive_path(self) -> None:
        r = self.response(await self.run_plugin("backup-verifier", "handle", {}, event_payload={}))
        self.assertEqual((r.status, r.retry), ("error", False))
        self.assertEqual(r.error, "event payload archive_path must be an absolute path, got None")


class ColdStorageSyncTests(PluginRunTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.destination = os.path.join(self.base, "cold")
        self.source = write(os.path.join(self.base, "archives", "nightly-2026-05-03.tar.zst"), b"payload")
        self.payload = {"archive_path": self.source, "archive_id": "nightly-2026-05-03",
                        "sha256": sha256(b"payload")}

    async def store(self, payload: Mapping[str, Any] | None = None) -> PluginResponse:
        return self.response(await self.run_plugin(
            "cold-storage-sync", "handle", {"destination_dir": self.destination},
            event_payload=self.payload if payload is None else payload))

    async def test_copies_then_is_idempotent(self) -> None:
        target = os.path.join(self.destination, "nightly-2026-05-03", "nightly-2026-05-03.tar.zst")
        first = await self.store()
        self.assertEqual(first.status, "ok")
        self.assertEqual(first.result, f"stored nightly-2026-05-03 at {target} (7 bytes)")
        self.assertEqual(list(first.events), [{
            "type": "backup.stored",
            "dedupe_key": "backup.stored:nightly-2026-05-03",
            "payload": {"archive_id": "nightly-2026-05-03", "stored_path": target, "sha256": sha256(b"payload")},
        }])
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"payload")
        # Only the archive itself: no temporary file left behind.
        self.assertEqual(os.listdir(self.destination), ["nightly-2026-05-03"])
        self.assertEqual(os.listdir(os.path.dirname(target)), ["nightly-2026-05-03.tar.zst"])

        mtime_ns = os.stat(target).st_mtime_ns
        os.utime(target, ns=(mtime_ns - 10**9, mtime_ns - 10**9))
        second = await self.store()
        self.assertEqual(second.status, "ok")
        self.assertEqual(second.result, f"already stored nightly-2026-05-03 at {target}")
        self.assertEqual(second.events[0]["payload"]["stored_path"], target)
        self.assertEqual(os.stat(target).st_mtime_ns, mtime_ns - 10**9, "the archive was copied again")

    async def test_different_content_is_never_overwritten(self) -> None:
        target = write(os.path.join(self.destination, "nightly-2026-05-03", "nightly-2026-05-03.tar.zst"), b"other")
        r = await self.store()
        self.assertEqual((r.status, r.retry), ("error", False))
        self.assertEqual(r.error, f"{target} already exists with different content (sha256 {sha256(b'other')}, "
                                  f"expected {sha256(b'payload')}); refusing to overwrite it")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"other")

    async def test_checksum_mismatch_stores_nothing(self) -> None:
        wrong = sha256(b"something else")
        r = await self.store({**self.payload, "sha256": wrong})
        self.assertEqual((r.status, r.retry), ("error", False))
        self.assertEqual(r.error, f"checksum mismatch while copying {self.source}: expected sha256 {wrong}, "
                                  f"got {sha256(b'payload')}; nothing stored")
        self.assertEqual(os.listdir(os.path.join(self.destination, "nightly-2026-05-03")), [])

    async def test_unsafe_archive_id_is_refused(self) -> None:
        r = await self.store({**self.payload, "archive_id": "../escape"})
        self.assertEqual((r.status, r.retry), ("error", False))
        self.assertEqual(r.error, "event payload archive_id must match ^[A-Za-z0-9][A-Za-z0-9._-]*$, "
                                  "got '../escape'")
        self.assertFalse(os.path.exists(self.destination))

    async def test_missing_source_is_retried(self) -> None:
        os.unlink(self.source)
        r = await self.store()
        self.assertEqual((r.status, r.retry), ("error", True))
        self.assertIn(f"archive not found: {self.source}", r.error)

    async def test_relative_destination_is_refused(self) -> None:
        r = self.response(await self.run_plugin(
            "cold-storage-sync", "handle", {"destination_dir": "cold"}, event_payload=self.payload))
        self.assertEqual((r.status, r.retry), ("error", False))
        self.assertIn("config destination_dir must be an absolute path, got 'cold'", r.error)


class CommonTests(PluginRunTestCase):
    async def test_health(self) -> None:
        r = self.response(await self.run_plugin("backup-verifier", "health", {}))
        self.assertEqual((r.status, r.result), ("ok", "healthy"))
        r = self.response(await self.run_plugin("cold-storage-sync", "health", {"destination_dir": self.base}))
        self.assertEqual((r.status, r.result), ("ok", f"healthy; storing into {self.base}"))

    async def test_unknown_command_is_not_retried(self) -> None:
        for name, supported in [("backup-runner", "poll, health"), ("backup-verifier", "handle, health"),
                                ("cold-storage-sync", "handle, health")]:
            r = self.response(await self.run_plugin(name, "init", {}))
            self.assertEqual((r.status, r.retry), ("error", False))
            self.assertEqual(r.error, f"unknown command 'init' (supported: {supported})")

    async def test_diagnostics_go_to_stderr(self) -> None:
        archives = os.path.join(self.base, "archives")
        write(os.path.join(archives, "a.tar"), b"x")
        outcome = await self.run_plugin("backup-runner", "poll", {"archive_dir": archives})
        self.assertEqual(self.response(outcome).status, "ok")
        self.assertIn("backup-runner: announcing", outcome.stderr_tail)
        self.assertNotIn("announcing", outcome.stdout)
