"""
The example configurations in C{etc/home-primary/} and C{etc/lab/} (issue 8):
both load and build as an instance would at start-up, and their pipelines
tell the seed's story: home-primary relays C{backup.ready} to lab; lab runs
C{process-offsite-backup} (verify, then store).

L{StoryTests} also plays the story through the routers with the real
example plugins as subprocesses, with the relay hop (HTTP, signing) replaced
by handing the relay dispatch's payload to lab's router as a root event.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.config import ConfigError, load_config
from ductile.events import Event
from ductile.executor import RELAY_PLUGIN
from ductile.instance import Instance, build_instance
from ductile.pipelines.router import Dispatch
from ductile.plugins.protocol import PluginResponse, build_request, normalize_events
from ductile.plugins.runner import ProcessRunner

HERE = os.path.dirname(os.path.abspath(__file__))
ETC = os.path.join(os.path.dirname(HERE), "etc")
SECRET = "0123456789abcdef" * 4


def environ(data_dir: str) -> dict[str, str]:
    return {"RELAY_LAB_V1_SECRET": SECRET, "DUCTILE_EXAMPLE_DATA": data_dir, "HOME": data_dir}


def build(name: str, data_dir: str) -> Instance:
    return build_instance(load_config(os.path.join(ETC, name), environ=environ(data_dir)))


def steps(dispatches: list[Dispatch]) -> list[tuple[str, str, str]]:
    return [(d.pipeline, d.step_id, d.plugin) for d in dispatches]


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    def test_lab(self) -> None:
        lab = build("lab", self.data)
        self.assertEqual(lab.config.service.name, "lab")
        self.assertEqual(lab.config.warnings, ())
        self.assertEqual(lab.plugin_problems, ())
        self.assertEqual(sorted(lab.plugins), ["backup-verifier", "cold-storage-sync"])
        self.assertEqual(lab.config.plugins["cold-storage-sync"].config,
                         {"destination_dir": os.path.join(self.data, "cold-storage")})
        self.assertEqual(lab.router.pipeline_names(), ["process-offsite-backup"])

    def test_home_primary(self) -> None:
        home = build("home-primary", self.data)
        self.assertEqual(home.config.service.name, "home-primary")
        self.assertEqual(home.config.warnings, ())
        self.assertEqual(home.plugin_problems, ())
        self.assertEqual(sorted(home.plugins), ["backup-runner", "backup-verifier"])
        runner = home.config.plugins["backup-runner"]
        self.assertEqual(runner.config, {"archive_dir": os.path.join(self.data, "archives")})
        self.assertEqual([(s.command, s.every) for s in runner.schedules], [("poll", 3600.0)])
        self.assertEqual(home.router.pipeline_names(), ["relay-backup-to-lab"])

    def test_data_directory_must_be_given(self) -> None:
        for name in ("lab", "home-primary"):
            env = environ(self.data)
            del env["DUCTILE_EXAMPLE_DATA"]
            with self.assertRaises(ConfigError) as caught:
                load_config(os.path.join(ETC, name), environ=env)
            self.assertIn("uses the unset environment variable ${DUCTILE_EXAMPLE_DATA}", str(caught.exception))


class RoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    def test_home_primary_relays_backup_ready_to_lab(self) -> None:
        home = build("home-primary", self.data)
        ready = Event.create("backup.ready", {"archive_id": "n1", "archive_path": "/a/n1.tar"},
                             "backup-runner", 1000.0, "backup.ready:n1")
        [d] = home.router.route_root(ready, source_plugin="backup-runner")
        self.assertEqual(steps([d]), [("relay-backup-to-lab", "relay-to-lab", RELAY_PLUGIN)])
        self.assertIsNone(d.error)
        assert d.relay is not None
        self.assertEqual((d.relay.to, d.relay.event_type), ("lab", "backup.ready"))
        self.assertEqual(d.relay.payload, {"archive_id": "n1", "archive_path": "/a/n1.tar"})
        self.assertEqual(d.relay.dedupe_key, "backup.ready:n1")
        self.assertEqual(home.router.route_next(Event.create("ductile.step.succeeded", {}, RELAY_PLUGIN, 1001.0),
                                                d.context, RELAY_PLUGIN), [])

    def test_lab_verifies_then_stores(self) -> None:
        lab = build("lab", self.data)
        ready = Event.create("backup.ready", {"archive_id": "n1"}, "relay:home-primary", 1000.0, "backup.ready:n1")
        [verify] = lab.router.route_root(ready)
        self.assertEqual(steps([verify]), [("process-offsite-backup", "verify-backup", "backup-verifier")])
        verified = Event.create("backup.verified", {"archive_id": "n1"}, "backup-verifier", 1001.0)
        [store] = lab.router.route_next(verified, verify.context, "backup-verifier")
        self.assertEqual(steps([store]), [("process-offsite-backup", "store-backup", "cold-storage-sync")])
        self.assertEqual(store.event.type, "backup.verified")
        self.assertEqual(store.instance_id, verify.instance_id)
        stored = Event.create("backup.stored", {"archive_id": "n1"}, "cold-storage-sync", 1002.0)
        self.assertEqual(lab.router.route_next(stored, store.context, "cold-storage-sync"), [])

    def test_lab_does_not_relay(self) -> None:
        # Nothing on lab starts from backup.verified / backup.stored.
        lab = build("lab", self.data)
        for type in ("backup.verified", "backup.stored"):
            self.assertEqual(lab.router.route_root(Event.create(type, {}, "x", 1.0)), [])


class StoryTests(TestCase):
    """The seed's end-to-end flow with the real plugins, minus the HTTP hop."""

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.runner = ProcessRunner(reactor)
        self.addCleanup(self.runner.shutdown)

    async def run_job(self, instance: Instance, plugin: str, command: str,
                      dispatch: Dispatch | None = None) -> PluginResponse:
        event = dispatch.event.to_json() if dispatch is not None else None
        context: dict[str, Any] = {**(dispatch.context if dispatch else {}), "ductile_plugin": plugin}
        request = build_request(
            job_id=str(uuid.uuid4()), command=command,
            config=instance.config.plugin_config(plugin).config, state={},
            payload=event, context=context, event=event, deadline_at="2026-05-03T01:01:00Z",
        )
        outcome = await self.runner.run(instance.plugins[plugin], request, 30.0)
        self.assertIsNone(outcome.error, outcome.stderr_tail)
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, "ok", outcome.response.error)
        return outcome.response

    async def test_backup_ready_from_home_primary_ends_in_cold_storage(self) -> None:
        home = build("home-primary", self.data)
        lab = build("lab", self.data)
        os.makedirs(os.path.join(self.data, "archives"))
        archive = os.path.join(self.data, "archives", "nightly-2026-05-03.tar.zst")
        with open(archive, "wb") as f:
            f.write(b"the nightly backup")

        # home-primary: the scheduled poll emits backup.ready; its pipeline relays it.
        polled = await self.run_job(home, "backup-runner", "poll")
        [ready] = normalize_events(polled, "backup-runner", 1000.0)
        [relay] = home.router.route_root(ready, source_plugin="backup-runner")
        assert relay.relay is not None
        self.assertEqual(relay.relay.to, "lab")

        # lab: the accepted event is a fresh root; process-offsite-backup runs.
        accepted = Event.create(relay.relay.event_type, relay.relay.payload, "relay:home-primary",
                                1001.0, relay.relay.dedupe_key)
        [verify] = lab.router.route_root(accepted)
        verified = await self.run_job(lab, "backup-verifier", "handle", verify)
        [store] = lab.router.route_next(normalize_events(verified, "backup-verifier", 1002.0)[0],
                                        verify.context, "backup-verifier")
        self.assertEqual(store.plugin, "cold-storage-sync")
        stored = await self.run_job(lab, "cold-storage-sync", "handle", store)

        target = os.path.join(self.data, "cold-storage", "nightly-2026-05-03", "nightly-2026-05-03.tar.zst")
        self.assertEqual(stored.result, f"stored nightly-2026-05-03 at {target} (18 bytes)")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"the nightly backup")
        self.assertEqual(stored.events[0]["payload"]["sha256"], hashlib.sha256(b"the nightly backup").hexdigest())
        self.assertEqual(lab.router.route_next(normalize_events(stored, "cold-storage-sync", 1003.0)[0],
                                               store.context, "cold-storage-sync"), [])
