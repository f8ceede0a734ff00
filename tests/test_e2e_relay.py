"""
Remote Event Relay end to end: two in-process instances on loopback, real
SQLite files, real plugin processes, the seed's pipeline on the receiver.
"""
from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from ductile.relay.envelope import Envelope, Origin
from ductile.testing.instance import free_port, port_of, read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder

SECRET = "e2e-shared-secret-7f3a9c"
TOKEN = "e2e-api-token"




class RelayFixture(TestCase):
    """Two instances' configs (lab receives, home-primary relays) and helpers."""

    timeout = 60

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.plugins = os.path.join(self.base, "plugins")
        for name in ("backup-verifier", "cold-storage-sync"):
            write_recorder(self.plugins, name)
        self.records = os.path.join(self.base, "records.jsonl")
        self.environ = dict(os.environ, RELAY_LAB_V1_SECRET=SECRET)

    def _tokens(self) -> dict[str, Any]:
        return {"tokens": [{"name": "relay-lab-v1", "key": "${RELAY_LAB_V1_SECRET}"}]}

    def lab_config(self, port: int = 0, **ingress: Any) -> str:
        peer = {"name": "home-primary", "enabled": True, "secret_ref": "relay-lab-v1", "key_id": "v1",
                "accept": ["backup.ready"], "baggage": {"allow": ["trace_id"]}}
        return write_config(os.path.join(self.base, "lab"), {
            "config.yaml": {
                "include": ["tokens.yaml", "relay-ingress.yaml", "pipelines.yaml"],
                "service": {"name": "lab", "tick_interval": "60s"},
                "plugin_roots": [self.plugins],
                "plugins": {
                    "backup-verifier": {"config": {"record_file": self.records, "emit": "backup.verified"}},
                    "cold-storage-sync": {"config": {"record_file": self.records}},
                },
                "api": {"enabled": True, "listen": f"127.0.0.1:{port}",
                        "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}},
                "state": {"path": "./data/state.db"},
            },
            "tokens.yaml": self._tokens(),
            "relay-ingress.yaml": {"remote_ingress": {"listen_path": "/ingest/peer", "require_key_id": True,
                                                      "peers": [peer], **ingress}},
            "pipelines.yaml": {"pipelines": [{
                "name": "process-offsite-backup", "on": "backup.ready",
                "steps": [{"id": "verify-backup", "uses": "backup-verifier"},
                          {"id": "store-backup", "uses": "cold-storage-sync"}],
            }]},
        })

    def home_config(self, lab_port: int) -> str:
        return write_config(os.path.join(self.base, "home"), {
            "config.yaml": {
                "include": ["tokens.yaml", "relay-instances.yaml", "pipelines.yaml"],
                "service": {"name": "home-primary"},
                "plugin_roots": [self.plugins],
                "api": {"enabled": True, "listen": "127.0.0.1:0",
                        "auth": {"tokens": [{"token": TOKEN, "scopes": ["*"]}]}},
                "state": {"path": "./data/state.db"},
            },
            "tokens.yaml": self._tokens(),
            "relay-instances.yaml": {"instances": [{
                "name": "lab", "enabled": True, "base_url": f"http://127.0.0.1:{lab_port}",
                "ingress_path": "/ingest/peer/home-primary", "secret_ref": "relay-lab-v1", "key_id": "v1",
                "timeout": "5s", "allow": ["backup.ready"],
                "retry": {"max_attempts": 6, "backoff_base": "100ms", "max_backoff": "1s"},
            }]},
            "pipelines.yaml": {"pipelines": [{
                "name": "offsite", "on": "backup.ready",
                "steps": [{"id": "relay-to-lab", "relay": {
                    "to": "lab", "event": "backup.ready",
                    # As in Go, baggage crosses only when projected explicitly.
                    "baggage": {"trace_id": "context.trace_id"},
                }}],
            }]},
        })

    async def _post(self, service: Any, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{port_of(service)}{path}"
        response = await treq.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, persistent=False)
        return response.code, json.loads(await response.content())

    async def _jobs(self, service: Any, **filters: Any) -> list[dict[str, Any]]:
        return await service.queue.list_jobs(limit=200, **filters)

    async def _all_done(self, service: Any) -> bool:
        counts = await service.queue.counts()
        return counts.get("queued", 0) + counts.get("running", 0) == 0 and sum(counts.values()) > 0



class RelayEndToEndTests(RelayFixture):
    async def test_pipeline_relay_runs_seed_pipeline_on_receiver(self) -> None:
        """
        home-primary's pipeline relays backup.ready; lab accepts it and runs
        process-offsite-backup (verify, then store) once, with the allowed
        baggage in the jobs' context; the sender records the acceptance.
        """
        lab = await start_instance(self, self.lab_config(), self.environ)
        home = await start_instance(self, self.home_config(port_of(lab)), self.environ)
        payload = {"archive_path": "/srv/backups/latest.tar.zst", "archive_id": "nightly-2026-05-03"}
        code, body = await self._post(home, "/pipeline/offsite", {
            "payload": payload, "baggage": {"trace_id": "tr-789"},
            "dedupe_key": "backup.ready:nightly-2026-05-03",
        })
        self.assertEqual(code, 202, body)
        await wait_until(home, lambda: self._all_done(home))
        [relay_job] = await self._jobs(home, plugin="core.relay")
        self.assertEqual(relay_job["status"], "succeeded", relay_job["last_error"])
        accepted = relay_job["result"]["accepted"]
        self.assertEqual((accepted["status"], accepted["peer"]), ("accepted", "home-primary"))

        await wait_until(lab, lambda: self._all_done(lab))
        records = read_records(self.records)
        self.assertEqual([r["plugin"] for r in records], ["backup-verifier", "cold-storage-sync"])
        first, second = records
        self.assertEqual(first["event"]["type"], "backup.ready")
        self.assertEqual(first["event"]["source"], "relay:home-primary")
        self.assertEqual(first["event"]["payload"]["archive_id"], "nightly-2026-05-03")
        self.assertEqual(first["context"]["trace_id"], "tr-789")
        self.assertNotIn("secret_stuff", first["context"])
        self.assertEqual(second["event"]["type"], "backup.verified")
        self.assertTrue(second["event"]["payload"]["seen_by_backup_verifier"])
        self.assertEqual(second["context"]["trace_id"], "tr-789")
        lab_jobs = {j["id"]: j for j in await self._jobs(lab)}
        self.assertIn(accepted["job_id"], lab_jobs)
        self.assertEqual(lab_jobs[accepted["job_id"]]["submitted_by"], "relay:home-primary")
        self.assertEqual(sorted(j["status"] for j in lab_jobs.values()), ["succeeded", "succeeded"])

    async def test_duplicate_delivery_processed_once(self) -> None:
        """
        The same event delivered twice (at-least-once) is accepted twice with
        the same job id and a new receiver event id, and processed once.
        """
        lab = await start_instance(self, self.lab_config(), self.environ)
        from ductile.relay.sender import RelaySender

        home_cfg_dir = self.home_config(port_of(lab))
        from ductile.config import load_config

        cfg = load_config(home_cfg_dir, environ=self.environ)
        sender = RelaySender(reactor, "home-primary", cfg.instances)
        self.addCleanup(sender.close)
        envelope = Envelope("backup.ready", {"archive_id": "a1"}, origin=Origin(event_id="evt-1"))
        one = await sender.attempt("lab", envelope)
        two = await sender.attempt("lab", envelope)
        self.assertEqual((one.kind, two.kind), ("accepted", "accepted"))
        self.assertEqual(one.acceptance["job_id"], two.acceptance["job_id"])
        self.assertNotEqual(one.acceptance["receiver_event_id"], two.acceptance["receiver_event_id"])
        await wait_until(lab, lambda: self._all_done(lab))
        self.assertEqual([r["plugin"] for r in read_records(self.records)], ["backup-verifier", "cold-storage-sync"])
        self.assertEqual(lab.ingress_stats.deduplicated, 1)

    async def test_receiver_down_then_up_delivers_with_retries(self) -> None:
        """
        While the receiver is down the relay job retries (each attempt
        recorded); once it listens, the event is delivered and processed.
        """
        lab_port = free_port()
        home = await start_instance(self, self.home_config(lab_port), self.environ)
        code, body = await self._post(home, "/pipeline/offsite", {"payload": {"archive_id": "a2"}, "baggage": {"trace_id": "t2"}})
        self.assertEqual(code, 202, body)

        async def retried() -> bool:
            jobs = await self._jobs(home, plugin="core.relay")
            return bool(jobs) and jobs[0]["attempt"] >= 2

        await wait_until(home, retried)
        [job] = await self._jobs(home, plugin="core.relay")
        attempts = await home.queue.relay_attempts(job["id"])
        self.assertEqual(attempts[0]["outcome"], "retryable")
        self.assertIn("deliver relay request to lab", attempts[0]["error"])

        lab = await start_instance(self, self.lab_config(port=lab_port), self.environ)

        async def delivered() -> bool:
            [j] = await self._jobs(home, plugin="core.relay")
            return j["status"] == "succeeded"

        await wait_until(home, delivered)
        await wait_until(lab, lambda: self._all_done(lab))
        self.assertEqual(len(read_records(self.records)), 2)

    async def test_pending_retry_survives_sender_restart(self) -> None:
        """
        A delivery waiting for its next retry when the sender stops is
        resumed from the database by the restarted sender and delivered once.
        """
        lab_port = free_port()
        home_dir = self.home_config(lab_port)
        home = await start_instance(self, home_dir, self.environ)
        await self._post(home, "/pipeline/offsite", {"payload": {"archive_id": "a4"}, "baggage": {"trace_id": "t"}})

        async def waiting() -> Any:
            jobs = await self._jobs(home, plugin="core.relay", status="queued")
            return jobs and jobs[0]["next_retry_at"] is not None and jobs[0]["attempt"] >= 2

        await wait_until(home, waiting)
        await home.stopService()
        lab = await start_instance(self, self.lab_config(port=lab_port), self.environ)
        home2 = await start_instance(self, home_dir, self.environ)

        async def delivered() -> bool:
            return bool(await self._jobs(home2, plugin="core.relay", status="succeeded"))

        await wait_until(home2, delivered)
        await wait_until(lab, lambda: self._all_done(lab))
        self.assertEqual([r["plugin"] for r in read_records(self.records)], ["backup-verifier", "cold-storage-sync"])
        self.assertEqual(len(await self._jobs(home2, plugin="core.relay")), 1)

    async def test_rejected_relay_goes_dead_and_replays(self) -> None:
        """
        A permanent rejection (the receiver does not accept the event type)
        makes the delivery dead with the receiver's error; a replay after the
        receiver is fixed delivers it.
        """
        lab = await start_instance(self, self.lab_config(), self.environ)
        home = await start_instance(self, self.home_config(port_of(lab)), self.environ)
        lab_port = port_of(lab)
        await lab.stopService()
        # Restart lab accepting nothing but another type: the relay is refused with 422.
        lab_dir = self.lab_config(port=lab_port)
        write_config(lab_dir, {"relay-ingress.yaml": {"remote_ingress": {"peers": [{
            "name": "home-primary", "secret_ref": "relay-lab-v1", "key_id": "v1", "accept": ["other.event"]}]}}})
        lab2 = await start_instance(self, lab_dir, self.environ)
        code, _ = await self._post(home, "/pipeline/offsite", {"payload": {"archive_id": "a3"}, "baggage": {"trace_id": "t3"}})
        self.assertEqual(code, 202)

        async def dead() -> Any:
            jobs = await self._jobs(home, plugin="core.relay", status="dead")
            return jobs[0] if jobs else None

        job = await wait_until(home, dead)
        self.assertEqual(job["last_error"], "relay receiver rejected request: event type not allowed for peer")
        self.assertEqual(job["attempt"], 1)

        await lab2.stopService()
        lab3 = await start_instance(self, self.lab_config(port=lab_port), self.environ)
        code, body = await self._post(home, f"/relay/deliveries/{job['id']}/replay", {})
        self.assertEqual(code, 202, body)

        async def replayed() -> bool:
            jobs = await self._jobs(home, plugin="core.relay", status="succeeded")
            return bool(jobs)

        await wait_until(home, replayed)
        await wait_until(lab3, lambda: self._all_done(lab3))
        self.assertEqual(len(read_records(self.records)), 2)


class QueuedSendTests(RelayFixture):
    """`relay send --queue` and POST /relay/{instance}: durable delivery through the local instance."""

    async def test_queued_send_is_delivered_with_origin(self) -> None:
        """
        The CLI hands the seed's envelope to home-primary, which commits a
        delivery and relays it; lab runs the pipeline with the given origin's
        derived identity and the admitted baggage.
        """
        import io

        from ductile.cli.main import build_parser

        from ductile.cli.relay_cmd import queue_send

        lab = await start_instance(self, self.lab_config(), self.environ)
        home = await start_instance(self, self.home_config(port_of(lab)), self.environ)
        home_dir = os.path.join(self.base, "home")
        # The CLI reaches the running instance through api.listen: give it the real port.
        with open(os.path.join(home_dir, "config.yaml")) as f:
            text = f.read().replace("127.0.0.1:0", f"127.0.0.1:{port_of(home)}")
        with open(os.path.join(home_dir, "config.yaml"), "w") as f:
            f.write(text)
        # The seed's CLI line, plus --queue.
        args = build_parser().parse_args([
            "relay", "send", "lab", "--event", "backup.ready",
            "--payload", '{"archive_path":"/srv/backups/latest.tar.zst","archive_id":"nightly-2026-05-03"}',
            "--dedupe-key", "backup.ready:nightly-2026-05-03", "--origin-plugin", "backup-runner",
            "--origin-job-id", "job-123", "--origin-event-id", "evt-456", "--baggage", '{"trace_id":"tr-789"}',
            "--queue", "--config", home_dir,
        ])
        out, err = io.StringIO(), io.StringIO()
        self.patch(os, "environ", self.environ)
        code = await deferToThreadWithReactor(queue_send, args, out, err)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("Queued backup.ready for lab as delivery", out.getvalue())

        async def delivered() -> bool:
            jobs = await self._jobs(home, plugin="core.relay", status="succeeded")
            return bool(jobs)

        await wait_until(home, delivered)
        await wait_until(lab, lambda: self._all_done(lab))
        first = read_records(self.records)[0]
        self.assertEqual(first["event"]["dedupe_key"], "backup.ready:nightly-2026-05-03")
        self.assertEqual(first["context"]["trace_id"], "tr-789")
        self.assertNotIn(SECRET, out.getvalue() + err.getvalue())

    async def test_enqueue_endpoint_rejections(self) -> None:
        """Unknown instance 404, disallowed type 422, bad type 400 — nothing queued."""
        home = await start_instance(self, self.home_config(free_port()), self.environ)
        self.assertEqual(await self._post(home, "/relay/nowhere", {"event": {"type": "backup.ready"}}),
                         (404, {"error": 'relay instance "nowhere" not configured'}))
        self.assertEqual(await self._post(home, "/relay/lab", {"event": {"type": "other.thing"}}),
                         (422, {"error": 'relay instance "lab" does not allow event type "other.thing"'}))
        self.assertEqual(await self._post(home, "/relay/lab", {"event": {"type": "Bad_Type"}}),
                         (400, {"error": "event.type must use lower-case dotted form"}))
        self.assertEqual(await self._jobs(home), [])


def deferToThreadWithReactor(f, *args):
    """Run a blocking CLI function in a thread while the reactor serves the API it calls."""
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)
