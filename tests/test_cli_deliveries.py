"""
C{ductile relay deliveries} / C{relay replay}: a real state database, and
for the API path a real L{ductile.web.api.Api} listening on loopback.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from ductile.cli.deliveries import ApiUnreachable, api_base_url, post_replay, replay_token
from ductile.config import load_config
from ductile.config.models import ApiConfig, ApiToken, Config
from tests.test_cli_job import TOKEN, api_section, make_state, run_cli, write_config


def job_row(path: str, job_id: str) -> dict:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM job_queue WHERE id=?", (job_id,)).fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, never listened, closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DeliveriesListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cfg, self.path, self.ids = make_state(self)

    def deliveries(self, *argv: str) -> tuple[int, str, str]:
        return run_cli("relay", "deliveries", *argv, "--config", self.cfg)

    def test_table(self) -> None:
        code, out, err = self.deliveries()
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "STATUS", "INSTANCE", "EVENT", "ATTEMPTS", "NEXT", "RETRY", "LAST",
                                            "ERROR"])
        rows = [line.split()[:5] for line in lines[1:]]
        ids = self.ids
        self.assertEqual(rows, [
            [ids["pending"], "pending", "gamma", "backup.ready", "0/4"],
            [ids["running"], "running", "beta", "backup.ready", "0/4"],
            [ids["delivered"], "delivered", "beta", "backup.ready", "1/4"],
            [ids["dead"], "dead", "beta", "backup.ready", "2/3"],
        ])
        self.assertTrue(lines[4].endswith("HTTP 403: forbidden"))
        self.assertNotIn(ids["echo"], out)  # plugin jobs are not deliveries

    def test_filters(self) -> None:
        _, out, _ = self.deliveries("--status", "dead")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [self.ids["dead"]])
        _, out, _ = self.deliveries("--status", "queued")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [self.ids["pending"]])
        _, out, _ = self.deliveries("--status", "retrying")
        self.assertEqual(out, "no deliveries\n")
        _, out, _ = self.deliveries("--status", "succeeded")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [self.ids["delivered"]])
        _, out, _ = self.deliveries("--instance", "gamma")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [self.ids["pending"]])
        _, out, _ = self.deliveries("--instance", "beta", "--limit", "1")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [self.ids["running"]])

    def test_retrying_shows_next_retry(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE job_queue SET status='queued', attempt=2, next_retry_at=1764000999, last_error='HTTP 503' "
                     "WHERE id=?", (self.ids["dead"],))
        conn.commit()
        conn.close()
        _, out, _ = self.deliveries("--status", "retrying")
        (row,) = out.splitlines()[1:]
        self.assertEqual(row.split(), [self.ids["dead"], "retrying", "beta", "backup.ready", "2/3",
                                       "2025-11-24T16:16:39Z", "HTTP", "503"])
        _, out, _ = self.deliveries("--status", "retrying", "--json")
        self.assertEqual(json.loads(out)["deliveries"][0]["next_retry_at"], "2025-11-24T16:16:39Z")

    def test_unknown_status(self) -> None:
        code, _, err = self.deliveries("--status", "lost")
        self.assertEqual(code, 1)
        self.assertIn("ductile relay deliveries: unknown delivery status 'lost' (expected one of: pending, retrying", err)

    def test_json(self) -> None:
        code, out, _ = self.deliveries("--status", "dead", "--json")
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(data["total"], 1)
        d = data["deliveries"][0]
        self.assertEqual(
            {k: d[k] for k in ("id", "status", "state", "to", "event_type", "dedupe_key", "attempts", "last_error",
                               "created_at")},
            {"id": self.ids["dead"], "status": "dead", "state": "dead", "to": "beta", "event_type": "backup.ready",
             "dedupe_key": "k-dead", "attempts": 2, "last_error": "HTTP 403: forbidden",
             "created_at": "2025-11-24T16:03:20Z"},
        )

    def test_missing_database(self) -> None:
        base = self.mktemp()
        write_config(base, state="gone.db")
        code, _, err = run_cli("relay", "deliveries", "--config", base)
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            f"ductile relay deliveries: no state database at {os.path.abspath(base)}/gone.db "
            "(has the instance run yet?)\n",
        )


class ReplayDatabaseTests(SynchronousTestCase):
    """No API reachable: the copy is written straight into the database."""

    def setUp(self) -> None:
        self.cfg, self.path, self.ids = make_state(self)

    def replay(self, *argv: str) -> tuple[int, str, str]:
        return run_cli("relay", "replay", *argv, "--config", self.cfg)

    def assert_copy(self, new_id: str, submitted_by: str) -> None:
        old, new = job_row(self.path, self.ids["dead"]), job_row(self.path, new_id)
        self.assertEqual(new["status"], "queued")
        self.assertEqual(new["attempt"], 1)
        self.assertEqual((new["plugin"], new["command"]), ("core.relay", "handle"))
        self.assertEqual(new["dedupe_key"], "k-dead")
        self.assertEqual(json.loads(new["payload"]), json.loads(old["payload"]))
        self.assertEqual(new["max_attempts"], old["max_attempts"])
        self.assertEqual(new["submitted_by"], submitted_by)
        self.assertEqual(old["status"], "dead")  # the original stays as it was

    def test_dead_delivery_replayed(self) -> None:
        code, out, err = self.replay(self.ids["dead"], "--json")
        self.assertEqual((code, err), (0, ""))
        answer = json.loads(out)
        self.assertEqual({k: answer[k] for k in ("replay_of", "status", "via", "dedupe_key")},
                         {"replay_of": self.ids["dead"], "status": "queued", "via": "database", "dedupe_key": "k-dead"})
        self.assert_copy(answer["job_id"], "cli replay")

    def test_text_output_and_prefix(self) -> None:
        code, out, _ = self.replay(self.ids["dead"][:8])
        self.assertEqual(code, 0)
        prefix = f"Replaying delivery {self.ids['dead']} as job "
        self.assertTrue(out.startswith(prefix), out)
        new_id = out[len(prefix):].split()[0]
        self.assertIn(f"(queued in {self.path}; it starts when the instance next starts or claims work)", out)
        self.assert_copy(new_id, "cli replay")
        _, listing, _ = run_cli("relay", "deliveries", "--status", "pending", "--config", self.cfg)
        self.assertIn(new_id, listing)

    def test_refuses_non_relay_job(self) -> None:
        code, out, err = self.replay(self.ids["echo"])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"ductile relay replay: job {self.ids['echo']} is a echo job, not a relay delivery (core.relay); "
            "only deliveries can be replayed\n",
        )

    def test_refuses_running_and_delivered(self) -> None:
        for role, state in (("running", "running"), ("delivered", "delivered"), ("pending", "pending")):
            code, _, err = self.replay(self.ids[role])
            self.assertEqual(code, 1)
            self.assertEqual(
                err,
                f"ductile relay replay: delivery {self.ids[role]} is {state}; only dead, failed or timed_out "
                "deliveries can be replayed\n",
            )
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0], 6)
        conn.close()

    def test_unknown_job(self) -> None:
        code, _, err = self.replay("nothing-here")
        self.assertEqual((code, err), (1, "ductile relay replay: job nothing-here not found\n"))

    def test_api_refused_connection_falls_back(self) -> None:
        port = closed_port()
        write_config(self.cfg, api=api_section(f"127.0.0.1:{port}"))
        code, out, err = self.replay(self.ids["dead"], "--json")
        self.assertEqual(code, 0)
        self.assertIn(f"note: the instance API at http://127.0.0.1:{port} is not reachable (", err)
        self.assertIn("writing to the state database", err)
        self.assertEqual(json.loads(out)["via"], "database")
        self.assert_copy(json.loads(out)["job_id"], "cli replay")
        self.assertNotIn(TOKEN, out + err)

    def test_api_without_replay_token_uses_database(self) -> None:
        write_config(self.cfg, api=api_section(f"127.0.0.1:{closed_port()}", scopes='["jobs:ro"]'))
        calls = []
        code, out, err = run_cli("relay", "replay", self.ids["dead"], "--config", self.cfg, "--json",
                                 post=lambda *a: calls.append(a))
        self.assertEqual((code, calls), (0, []))
        self.assertIn("note: no api.auth token with relay:rw scope in the config", err)
        self.assertEqual(json.loads(out)["via"], "database")


class ReplayHelpersTests(SynchronousTestCase):
    def test_api_base_url(self) -> None:
        self.assertEqual(api_base_url("127.0.0.1:8080"), "http://127.0.0.1:8080")
        self.assertEqual(api_base_url("0.0.0.0:80"), "http://127.0.0.1:80")
        self.assertEqual(api_base_url(":9000"), "http://127.0.0.1:9000")
        self.assertEqual(api_base_url("[::]:9000"), "http://[::1]:9000")
        self.assertEqual(api_base_url("[::1]:9000"), "http://[::1]:9000")

    def test_replay_token(self) -> None:
        def cfg(*tokens: ApiToken) -> Config:
            return Config(config_file="x", config_dir=".", api=ApiConfig(enabled=True, tokens=tokens))

        self.assertIsNone(replay_token(cfg(ApiToken("a", ("relay:ro",)), ApiToken("b", ("jobs:rw",)))))
        self.assertEqual(replay_token(cfg(ApiToken("a", ("relay:ro",)), ApiToken("b", ("relay:rw",)))), "b")
        self.assertEqual(replay_token(cfg(ApiToken("c", ("*",)))), "c")

    def test_post_unreachable(self) -> None:
        port = closed_port()
        with self.assertRaises(ApiUnreachable):
            post_replay(f"http://127.0.0.1:{port}", TOKEN, "x", timeout=5)


class ReplayApiTests(TestCase):
    """A running instance's API: the replay goes through it."""

    async def start_api(self, cli_token: str = TOKEN) -> tuple[str, str, dict]:
        from twisted.internet import reactor

        from ductile.testing.db import make_queue
        from ductile.web.api import Api

        cfg, path, ids = make_state(self, api=api_section("127.0.0.1:1"))
        queue, _pool, _ = make_queue(self, reactor, path=path)
        api = Api(reactor, load_config(cfg), queue, {}, None)
        port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        write_config(cfg, api=api_section(f"127.0.0.1:{port.getHost().port}", token=cli_token))
        return cfg, path, ids

    async def test_replay_through_api(self) -> None:
        cfg, path, ids = await self.start_api()
        code, out, err = await threads.deferToThread(
            run_cli, "relay", "replay", ids["dead"], "--config", cfg, "--json"
        )
        self.assertEqual((code, err), (0, ""))
        answer = json.loads(out)
        self.assertEqual((answer["via"], answer["replay_of"]), ("api", ids["dead"]))
        new = job_row(path, answer["job_id"])
        self.assertEqual((new["status"], new["dedupe_key"], new["submitted_by"]), ("queued", "k-dead", "replay"))
        self.assertNotIn(TOKEN, out + err)

    async def test_text_output(self) -> None:
        cfg, path, ids = await self.start_api()
        code, out, _ = await threads.deferToThread(run_cli, "relay", "replay", ids["dead"], "--config", cfg)
        self.assertEqual(code, 0)
        self.assertRegex(out, rf"^Replaying delivery {ids['dead']} as job [0-9a-f-]{{36}} "
                              r"\(queued on the running instance\)\n$")

    async def test_api_rejects_token(self) -> None:
        cfg, path, ids = await self.start_api(cli_token="not-the-instance-token")
        code, out, err = await threads.deferToThread(run_cli, "relay", "replay", ids["dead"], "--config", cfg)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err, f"ductile relay replay: the instance API refused the replay of {ids['dead']}: invalid token (HTTP 401)\n"
        )
        self.assertNotIn("not-the-instance-token", err)
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0], 6)
        conn.close()

    async def test_connected_but_no_answer_does_not_fall_back(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        class HangUp(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.loseConnection()

        cfg, path, ids = make_state(self)
        port = reactor.listenTCP(0, Factory.forProtocol(HangUp), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        write_config(cfg, api=api_section(f"127.0.0.1:{port.getHost().port}"))
        code, out, err = await threads.deferToThread(run_cli, "relay", "replay", ids["dead"], "--config", cfg)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"ductile relay replay: no answer from the instance API at http://127.0.0.1:{port.getHost().port} (", err)
        self.assertIn("the replay may or may not have been queued: check `ductile relay deliveries`", err)
        self.assertNotIn(TOKEN, err)
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM job_queue").fetchone()[0], 6)
        conn.close()

    async def test_proxy_environment_ignored(self) -> None:
        cfg, path, ids = await self.start_api()
        self.patch(os, "environ", dict(os.environ, http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                                       no_proxy=""))
        code, out, err = await threads.deferToThread(
            run_cli, "relay", "replay", ids["dead"], "--config", cfg, "--json"
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["via"], "api")
