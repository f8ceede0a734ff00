"""
Reloading a running instance's config: the plan (what needs a restart), the
reloader with fakes, and real instances reloaded through the service, the
API, the CLI and SIGHUP to a real twistd.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import attrs
import treq
from twisted.internet import defer, protocol, reactor, task, threads, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ductile.config.models import ApiConfig, ApiToken, Config, Peer, PeerKey, RemoteIngress, StateConfig
from ductile.relay.envelope import Envelope, Origin
from ductile.relay.signing import sign
from ductile.reload import REMOVED_PLUGIN_REASON, ReloadError, Reloader, describe_changes, plan_reload
from ductile.testing.instance import free_port, port_of, read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder
from ductile.timestamps import format_rfc3339nano

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_TOKEN = "reload-test-old-token-1"
NEW_TOKEN = "reload-test-new-token-2"
PEER_SECRET = "reload-peer-secret-5b1c"




# -- the plan -------------------------------------------------------------------


def _config(**kw: Any) -> Config:
    return Config(config_file="/etc/ductile/lab/config.yaml", config_dir="/etc/ductile/lab", **kw)


def _ingress(*peers: str, **kw: Any) -> RemoteIngress:
    return RemoteIngress(peers=tuple(Peer(n, (PeerKey("k", secret="s"),)) for n in peers), **kw)


class PlanTests(SynchronousTestCase):
    def test_unchanged(self) -> None:
        old = _config()
        plan = plan_reload(old, _config())
        self.assertEqual(plan.restart_needed, ())
        self.assertEqual(plan.config, old)

    def test_live_changes_pass_through(self) -> None:
        """Peers, tokens and instances are taken as they are."""
        old = _config(remote_ingress=_ingress("home"), api=ApiConfig(tokens=(ApiToken("a"),)))
        new = _config(remote_ingress=_ingress("office"), api=ApiConfig(tokens=(ApiToken("b"),)))
        plan = plan_reload(old, new)
        self.assertEqual(plan.restart_needed, ())
        self.assertIs(plan.config, new)

    def test_listen_and_state_keep_running_values(self) -> None:
        old = _config(api=ApiConfig(enabled=True, listen="127.0.0.1:8080"), state=StateConfig(path="/a.db"))
        new = _config(api=ApiConfig(enabled=True, listen="0.0.0.0:9090", tokens=(ApiToken("t"),)),
                      state=StateConfig(path="/b.db"))
        plan = plan_reload(old, new)
        self.assertEqual(plan.config.api.listen, "127.0.0.1:8080")
        self.assertEqual(plan.config.state.path, "/a.db")
        self.assertEqual(plan.config.api.tokens, (ApiToken("t"),))
        self.assertEqual(plan.restart_needed, (
            "state.path changed from '/a.db' to '/b.db' but needs a restart; still using '/a.db'",
            "api.listen changed from '127.0.0.1:8080' to '0.0.0.0:9090' but needs a restart; "
            "still using '127.0.0.1:8080'",
        ))

    def test_service_name_needs_restart(self) -> None:
        old = _config()
        new = _config(service=attrs.evolve(old.service, name="lab2", dedupe_ttl=5.0))
        plan = plan_reload(old, new)
        self.assertEqual(plan.config.service.name, "ductile")
        self.assertEqual(plan.config.service.dedupe_ttl, 5.0)
        self.assertIn("service.name changed from 'ductile' to 'lab2'", plan.restart_needed[0])

    def test_adding_the_receiver_needs_restart(self) -> None:
        plan = plan_reload(_config(), _config(remote_ingress=_ingress("home")))
        self.assertIsNone(plan.config.remote_ingress)
        self.assertEqual(plan.restart_needed, (
            "remote_ingress was added but adding or removing the relay receiver needs a restart; it stays off",
        ))

    def test_removing_the_receiver_needs_restart(self) -> None:
        old = _config(remote_ingress=_ingress("home"))
        plan = plan_reload(old, _config())
        self.assertEqual(plan.config.remote_ingress, old.remote_ingress)
        self.assertEqual(len(plan.restart_needed), 1)
        self.assertIn("it keeps accepting its current peers", plan.restart_needed[0])

    def test_ingress_path_and_cap_kept_peers_live(self) -> None:
        old = _config(remote_ingress=_ingress("home", listen_path="/ingest/peer", max_body_size=1000))
        new = _config(remote_ingress=_ingress("office", listen_path="/relay", max_body_size=5000))
        plan = plan_reload(old, new)
        ingress = plan.config.remote_ingress
        self.assertEqual((ingress.listen_path, ingress.max_body_size), ("/ingest/peer", 1000))
        self.assertEqual([p.name for p in ingress.peers], ["office"])
        self.assertEqual(len(plan.restart_needed), 2)

    def test_manhole_change_shows_no_values(self) -> None:
        from ductile.config.models import ManholeConfig

        old = _config(manhole=ManholeConfig("tcp:2222", "/k", "/a"))
        plan = plan_reload(old, _config(manhole=ManholeConfig("tcp:2223", "/k", "/a")))
        self.assertEqual(plan.config.manhole, old.manhole)
        self.assertEqual(plan.restart_needed,
                         ("manhole changed but needs a restart; still using the running settings",))


@attrs.frozen
class _FakeRouter:
    names: tuple[str, ...] = ()

    def pipeline_names(self) -> list[str]:
        return list(self.names)


@attrs.frozen
class _FakeInstance:
    config: Config
    plugins: dict[str, Any] = attrs.field(factory=dict)
    router: Any = attrs.field(factory=_FakeRouter)
    plugin_problems: tuple[str, ...] = ()


class DescribeTests(SynchronousTestCase):
    def test_names_only_never_token_values(self) -> None:
        old = _FakeInstance(_config(api=ApiConfig(tokens=(ApiToken("secret-old-value", ("*",)),))),
                            {"a": 1, "b": 1}, _FakeRouter(("p1",)))
        new = _FakeInstance(_config(api=ApiConfig(tokens=(ApiToken("secret-new-value", ("*",)),)),
                                    remote_ingress=_ingress("office")),
                            {"a": 1, "c": 1}, _FakeRouter(("p1", "p2")))
        changes = describe_changes(old, new)
        self.assertEqual(changes, (
            "plugins: +c -b", "pipelines: +p2", "relay peers: +office", "api tokens: 1 new or changed, 1 removed",
        ))
        self.assertNotIn("secret", " ".join(changes))


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.current = _FakeInstance(_config())
        self.swapped: list[Any] = []
        self.swap_result: Any = None

    def swap(self, instance: Any, plan: Any) -> Any:
        self.swapped.append((instance, plan))
        self.current = instance
        return self.swap_result

    def reloader(self, load: Any, running: Any = lambda: True) -> Reloader:
        return Reloader(self.clock, lambda: self.current, self.swap, load=load, running=running)

    def test_refused_changes_nothing(self) -> None:
        def load(path: str) -> Any:
            self.assertEqual(path, "/etc/ductile/lab/config.yaml")
            raise ReloadError("config.yaml: pipelines[0].steps[0].uses: unknown plugin 'nope'")

        failure = self.failureResultOf(self.reloader(load).reload(), ReloadError)
        self.assertEqual(str(failure.value), "config.yaml: pipelines[0].steps[0].uses: unknown plugin 'nope'")
        self.assertEqual(self.swapped, [])

    def test_not_running(self) -> None:
        failure = self.failureResultOf(self.reloader(lambda p: None, running=lambda: False).reload(), ReloadError)
        self.assertEqual(str(failure.value), "the instance is not running (still starting or stopping)")

    def test_report(self) -> None:
        new = _FakeInstance(_config(api=ApiConfig(listen="0.0.0.0:1")), {"a": 1}, plugin_problems=("x: bad",))
        self.swap_result = defer.succeed(["job-1"])
        report = self.successResultOf(self.reloader(lambda p: new).reload())
        self.assertEqual(report, {
            "status": "reloaded",
            "reloaded_at": format_rfc3339nano(1_700_000_000),
            "message": "configuration reloaded",
            "changes": ["plugins: +a"],
            "restart_needed": [
                "api.listen changed from '127.0.0.1:8080' to '0.0.0.0:1' but needs a restart; "
                "still using '127.0.0.1:8080'"
            ],
            "warnings": ["x: bad"],
            "dead_jobs": ["job-1"],
        })
        [(instance, plan)] = self.swapped
        # What is swapped in carries the running listen address.
        self.assertEqual(instance.config.api.listen, "127.0.0.1:8080")
        self.assertIs(plan.config, instance.config)

    def test_reloads_one_at_a_time(self) -> None:
        """A second reload waits until the first one's swap has finished."""
        first_done: defer.Deferred[list[str]] = defer.Deferred()
        self.swap_result = first_done
        loads: list[str] = []

        def load(path: str) -> Any:
            loads.append(path)
            return _FakeInstance(_config())

        reloader = self.reloader(load)
        one, two = reloader.reload(), reloader.reload()
        self.assertEqual(len(loads), 1)
        self.assertNoResult(two)
        self.swap_result = None
        first_done.callback([])
        self.successResultOf(one)
        self.successResultOf(two)
        self.assertEqual(len(loads), 2)


class ApiReloadTests(SynchronousTestCase):
    """C{POST /system/reload}'s handler, with a fake reloader."""

    def api(self, reloader: Any) -> Any:
        from ductile.web.api import Api

        return Api(task.Clock(), _config(), None, {}, _FakeRouter(), reloader=reloader)

    def principal(self) -> Any:
        from ductile.web.auth import Principal

        return Principal("ops", frozenset({"system:rw"}))

    def test_client_going_away_does_not_cancel_the_reload(self) -> None:
        reloading: defer.Deferred[Any] = defer.Deferred()
        api = self.api(lambda: reloading)
        handling = defer.ensureDeferred(api.system_reload(None, self.principal()))
        handling.cancel()
        self.failureResultOf(handling, defer.CancelledError)
        self.assertFalse(reloading.called)
        reloading.callback({"status": "reloaded"})
        self.assertEqual(self.successResultOf(reloading), None)  # consumed, not an unhandled error

    def test_refusal_is_409(self) -> None:
        from ductile.web.api import ApiError

        api = self.api(lambda: defer.fail(ReloadError("config.yaml: invalid YAML at line 3, column 1")))
        failure = self.failureResultOf(defer.ensureDeferred(api.system_reload(None, self.principal())), ApiError)
        self.assertEqual((failure.value.status, failure.value.message),
                         (409, "config.yaml: invalid YAML at line 3, column 1"))

    def test_without_reloader_501(self) -> None:
        from ductile.web.api import ApiError

        failure = self.failureResultOf(defer.ensureDeferred(self.api(None).system_reload(None, self.principal())),
                                       ApiError)
        self.assertEqual((failure.value.status, failure.value.message), (501, "reload not supported"))


# -- real instances -------------------------------------------------------------

GATE = r'''#!{python} -I
import json, sys
request = json.loads(sys.stdin.read())
config = request.get("config") or {{}}
with open(config["started"], "a") as f:
    f.write(request["job_id"] + "\n")
with open(config["gate"]) as g:
    g.read()
print(json.dumps({{"status": "ok", "result": "gate opened", "events": [{{"type": "gate.done", "payload": {{}}}}]}}))
'''


def write_gate(root: str) -> None:
    directory = os.path.join(root, "gate")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "manifest.yaml"), "w") as f:
        f.write("manifest_spec: ductile.plugin\nmanifest_version: 1\nname: gate\nversion: '1.0'\nprotocol: 2\n"
                "entrypoint: run.py\ncommands:\n  - name: handle\n  - name: poll\n")
    entry = os.path.join(directory, "run.py")
    with open(entry, "w") as f:
        f.write(GATE.format(python=sys.executable))
    os.chmod(entry, 0o755)


class _ReloadFixture(TestCase):
    """A real instance's config (alpha, beta, gamma recorders; one relay peer) and helpers."""

    timeout = 60

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.plugins = os.path.join(self.base, "plugins")
        for name in ("alpha", "beta", "gamma"):
            write_recorder(self.plugins, name)
        self.records = os.path.join(self.base, "records.jsonl")
        self.dir = os.path.join(self.base, "cfg")
        self.port = 0

    def write(self, *, pipelines: list[Any] = (), peers: tuple[str, ...] = ("home-primary",),
              tokens: tuple[str, ...] = (OLD_TOKEN,), plugins: dict[str, Any] | None = None,
              listen: str | None = None, **extra: Any) -> str:
        config = {
            "service": {"name": "lab", "max_workers": 2},
            "plugin_roots": [self.plugins],
            "plugins": plugins if plugins is not None else {
                n: {"config": {"record_file": self.records}} for n in ("alpha", "beta", "gamma")
            },
            "tokens": [{"name": "relay-peer", "key": PEER_SECRET}],
            "api": {"enabled": True, "listen": listen or f"127.0.0.1:{self.port}",
                    "auth": {"tokens": [{"token": t, "scopes": ["*"]} for t in tokens]
                             + [{"token": "reader-token", "scopes": ["jobs:ro"]}]}},
            "remote_ingress": {"peers": [{"name": p, "secret_ref": "relay-peer"} for p in peers]},
            "state": {"path": os.path.join(self.base, "state.db")},
            "pipelines": list(pipelines),
            **extra,
        }
        return write_config(self.dir, {"config.yaml": config})

    def url(self, service: Any, path: str) -> str:
        return f"http://127.0.0.1:{port_of(service)}{path}"

    async def request(self, service: Any, method: str, path: str, token: str = OLD_TOKEN,
                      body: Any = None) -> tuple[int, Any]:
        response = await treq.request(method, self.url(service, path), json=body,
                                      headers={"Authorization": f"Bearer {token}"}, persistent=False)
        return response.code, json.loads(await response.content())

    async def relay(self, service: Any, peer: str) -> tuple[int, Any]:
        path = f"/ingest/peer/{peer}"
        body = Envelope("backup.ready", {"n": 1}, origin=Origin(instance=peer, event_id=f"e-{peer}")).to_bytes()
        timestamp = format_rfc3339nano(reactor.seconds())
        headers = {"X-Ductile-Peer": peer, "X-Ductile-Timestamp": timestamp,
                   "X-Ductile-Signature": sign(PEER_SECRET, "POST", path, timestamp, body),
                   "Content-Type": "application/json"}
        response = await treq.post(self.url(service, path), data=body, headers=headers, persistent=False)
        return response.code, json.loads(await response.content())

    @staticmethod
    def pipeline(name: str, on: str, *plugins: str) -> dict[str, Any]:
        return {"name": name, "on": on, "steps": [{"id": f"s-{p}", "uses": p} for p in plugins]}

    async def _old_config_still_works(self, service: Any) -> None:
        self.assertEqual((await self.request(service, "GET", "/jobs"))[0], 200)
        code, body = await self.request(service, "POST", "/pipeline/p?async=true", body={"payload": {}})
        self.assertEqual(code, 202, body)
        self.assertEqual((await self.relay(service, "home-primary"))[0], 202)


class ReloadInstanceTests(_ReloadFixture):

    async def test_new_pipeline_routes_after_reload(self) -> None:
        service = await start_instance(self, self.write())
        self.assertEqual(await self.request(service, "POST", "/pipeline/fresh", body={"payload": {}}),
                         (404, {"error": "pipeline 'fresh' not found"}))
        self.write(pipelines=[self.pipeline("fresh", "fresh.go", "alpha", "beta")])
        report = await service.reload()
        self.assertEqual(report["status"], "reloaded")
        self.assertEqual(report["changes"], ["pipelines: +fresh"])
        self.assertEqual(report["restart_needed"], [])
        code, body = await self.request(service, "POST", "/pipeline/fresh?async=true", body={"payload": {"x": 1}})
        self.assertEqual(code, 202, body)

        async def both_ran() -> bool:
            return len(read_records(self.records)) == 2

        await wait_until(service, both_ran)
        self.assertEqual([r["plugin"] for r in read_records(self.records)], ["alpha", "beta"])

    async def test_peers_follow_reload(self) -> None:
        """A removed peer is refused afterwards (403 unknown relay peer), a new one accepted."""
        self.write(pipelines=[self.pipeline("p", "backup.ready", "alpha")])
        service = await start_instance(self, self.dir)
        self.assertEqual((await self.relay(service, "office"))[0], 403)
        code, body = await self.relay(service, "home-primary")
        self.assertEqual((code, body["status"]), (202, "accepted"))

        self.write(pipelines=[self.pipeline("p", "backup.ready", "alpha")], peers=("office",))
        report = await service.reload()
        self.assertEqual(report["changes"], ["relay peers: +office -home-primary"])
        self.assertEqual(await self.relay(service, "home-primary"), (403, {"error": "unknown relay peer"}))
        code, body = await self.relay(service, "office")
        self.assertEqual((code, body["status"], body["peer"]), (202, "accepted", "office"))
        self.assertTrue(body["job_id"])

    async def test_relay_instance_added_by_reload(self) -> None:
        """
        An instance with no relay sender gets one from a reload: a delivery
        to the new instance (this instance itself, as peer "lab") is sent,
        accepted and routed.
        """
        self.port = free_port()
        pipelines = [self.pipeline("p", "backup.ready", "alpha")]
        service = await start_instance(self, self.write(peers=("lab",), pipelines=pipelines))
        self.assertIsNone(service.sender)
        envelope = {"event": {"type": "backup.ready", "payload": {"n": 7}}}
        self.assertEqual(await self.request(service, "POST", "/relay/self", body=envelope),
                         (404, {"error": 'relay instance "self" not configured'}))
        self.write(peers=("lab",), pipelines=pipelines, instances=[{
            "name": "self", "base_url": f"http://127.0.0.1:{self.port}", "ingress_path": "/ingest/peer/lab",
            "secret_ref": "relay-peer", "retry": {"max_attempts": 1},
        }])
        report = await service.reload()
        self.assertEqual(report["changes"], ["relay instances: +self"])
        code, body = await self.request(service, "POST", "/relay/self", body=envelope)
        self.assertEqual(code, 202, body)
        delivery = body["job_id"]

        async def delivered_and_ran() -> bool:
            job = await service.queue.get_job(delivery)
            return job["status"] == "succeeded" and len(read_records(self.records)) == 1

        await wait_until(service, delivered_and_ran)
        [record] = read_records(self.records)
        self.assertEqual((record["plugin"], record["event"]["payload"]["n"]), ("alpha", 7))

    async def test_tokens_follow_reload_via_api(self) -> None:
        service = await start_instance(self, self.write())
        self.assertEqual((await self.request(service, "GET", "/jobs", token=NEW_TOKEN))[0], 401)
        self.write(tokens=(NEW_TOKEN,))
        code, body = await self.request(service, "POST", "/system/reload")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["status"], "reloaded")
        self.assertEqual(body["message"], "configuration reloaded")
        self.assertEqual(body["changes"], ["api tokens: 1 new or changed, 1 removed"])
        self.assertNotIn(NEW_TOKEN, json.dumps(body))
        self.assertEqual((await self.request(service, "GET", "/jobs", token=NEW_TOKEN))[0], 200)
        self.assertEqual(await self.request(service, "GET", "/jobs", token=OLD_TOKEN),
                         (401, {"error": "invalid token"}))

    async def test_reload_needs_system_rw(self) -> None:
        service = await start_instance(self, self.write())
        self.assertEqual(await self.request(service, "POST", "/system/reload", token="reader-token"),
                         (403, {"error": "token lacks scope (needs one of: system:rw)"}))
        self.assertEqual(await self.request(service, "POST", "/system/reload", token="nope"),
                         (401, {"error": "invalid token"}))
        self.assertEqual((await self.request(service, "GET", "/system/reload"))[0], 405)

    async def test_bad_yaml_refused_old_config_kept(self) -> None:
        service = await start_instance(self, self.write(pipelines=[self.pipeline("p", "p.go", "alpha")]))
        with open(os.path.join(self.dir, "config.yaml"), "a") as f:
            f.write("plugins: [unclosed\n")
        with self.assertRaises(ReloadError) as caught:
            await service.reload()
        self.assertTrue(str(caught.exception).startswith("config.yaml: invalid YAML at line "), caught.exception)
        code, body = await self.request(service, "POST", "/system/reload")
        self.assertEqual((code, body), (409, {"error": str(caught.exception)}))
        self.assertNotIn(PEER_SECRET, body["error"])
        await self._old_config_still_works(service)

    async def test_unknown_plugin_refused_old_config_kept(self) -> None:
        service = await start_instance(self, self.write(pipelines=[self.pipeline("p", "p.go", "alpha")]))
        self.write(pipelines=[self.pipeline("p", "p.go", "alpha"), self.pipeline("q", "q.go", "nosuch")],
                   tokens=(NEW_TOKEN,), peers=("office",))
        code, body = await self.request(service, "POST", "/system/reload")
        self.assertEqual(code, 409)
        self.assertIn("nosuch", body["error"])
        # Nothing of the refused config applies: not the token, not the peer.
        self.assertEqual((await self.request(service, "GET", "/jobs", token=NEW_TOKEN))[0], 401)
        self.assertEqual((await self.relay(service, "office"))[0], 403)
        await self._old_config_still_works(service)

    async def test_restart_only_setting_kept(self) -> None:
        """A changed api.listen is reported and the old listener keeps serving the new tokens."""
        service = await start_instance(self, self.write())
        port = port_of(service)
        self.write(tokens=(NEW_TOKEN,), listen="127.0.0.1:1")
        code, body = await self.request(service, "POST", "/system/reload")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["restart_needed"], [
            "api.listen changed from '127.0.0.1:0' to '127.0.0.1:1' but needs a restart; still using '127.0.0.1:0'"
        ])
        self.assertEqual(port_of(service), port)
        self.assertEqual((await self.request(service, "GET", "/jobs", token=NEW_TOKEN))[0], 200)

    async def test_unchanged_schedule_keeps_its_next_run(self) -> None:
        """
        The scheduler restarts with the reload, but a schedule keeps its next
        run (stored per plugin and schedule id, as in Go): it does not fire
        again at once; a schedule the reload adds starts as at startup.
        """
        def plugins(*ids: str) -> dict[str, Any]:
            return {"alpha": {"config": {"record_file": self.records},
                              "schedules": [{"id": i, "every": "1h"} for i in ids]}}

        service = await start_instance(self, self.write(plugins=plugins("h")))

        async def polls() -> list[Any]:
            return await service.queue.list_jobs(plugin="alpha", command="poll", limit=10)

        async def done(n: int) -> bool:
            jobs = await polls()
            return len(jobs) == n and all(j["status"] == "succeeded" for j in jobs)

        # An every schedule without jitter fires at start.
        await wait_until(service, lambda: done(1))
        self.write(plugins=plugins("h"), tokens=(OLD_TOKEN, NEW_TOKEN))
        await service.reload()  # fires once the new schedules are armed
        [entry] = service.scheduler.entries
        self.assertGreater(entry.next_at, service.reactor.seconds() + 3000)
        await service.scheduler.settled()
        self.assertEqual(len(await polls()), 1)

        self.write(plugins=plugins("h", "new"))
        await service.reload()
        await wait_until(service, lambda: done(2))
        self.assertEqual(sorted(e.schedule.id for e in service.scheduler.entries), ["h", "new"])

    async def test_running_job_finishes_under_its_config(self) -> None:
        """
        A job running during the reload finishes and routes by the pipeline
        it started under, though the reload removed that pipeline; queued
        work of a plugin the reload disabled is dead.
        """
        write_gate(self.plugins)
        fifo = os.path.join(self.base, "gate.fifo")
        os.mkfifo(fifo)
        started = os.path.join(self.base, "started")
        plugins = {"gate": {"config": {"gate": fifo, "started": started}},
                   **{n: {"config": {"record_file": self.records}} for n in ("alpha", "beta", "gamma")}}
        self.write(plugins=plugins, service={"name": "lab", "max_workers": 1},
                   pipelines=[self.pipeline("gated", "gated.go", "gate", "gamma")])
        service = await start_instance(self, self.dir)
        code, body = await self.request(service, "POST", "/pipeline/gated?async=true", body={"payload": {}})
        self.assertEqual(code, 202, body)
        root = body["job_id"]

        async def running() -> bool:
            job = await service.queue.get_job(root)
            return job["status"] == "running"

        await wait_until(service, running)
        # max_workers 1: this one waits in the queue behind the gate.
        code, body = await self.request(service, "POST", "/plugin/beta/handle", body={"payload": {}})
        self.assertEqual(code, 202, body)
        queued_beta = body["job_id"]

        plugins["beta"] = {"enabled": False}
        self.write(plugins=plugins, service={"name": "lab", "max_workers": 1}, pipelines=[])
        report = await service.reload()
        self.assertEqual(report["changes"], ["plugins: -beta", "pipelines: -gated"])
        self.assertEqual(report["dead_jobs"], [queued_beta])
        beta = await service.queue.get_job(queued_beta)
        self.assertEqual((beta["status"], beta["last_error"]), ("dead", REMOVED_PLUGIN_REASON))

        def open_gate() -> None:
            with open(fifo, "w") as f:
                f.write("go")

        await threads.deferToThread(open_gate)

        async def tree_done() -> list[Any] | None:
            tree = await service.queue.job_tree(root)
            return tree if len(tree) == 2 and all(j["status"] == "succeeded" for j in tree) else None

        tree = await wait_until(service, tree_done)
        self.assertEqual([j["plugin"] for j in tree], ["gate", "gamma"])
        self.assertEqual([r["plugin"] for r in read_records(self.records)], ["gamma"])


# -- the CLI verb in a real process ------------------------------------------------


class ReloadCliTests(_ReloadFixture):
    async def cli(self, *argv: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
        environ = dict(os.environ, PYTHONPATH=ROOT)
        environ.pop("DUCTILE_API_KEY", None)
        environ.update(env or {})
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "ductile", "system", "reload", *argv], env=environ, path=ROOT
        )
        return out.decode(), err.decode(), code

    async def test_cli_reload_exits_0(self) -> None:
        self.port = free_port()
        service = await start_instance(self, self.write())
        self.write(pipelines=[self.pipeline("fresh", "fresh.go", "alpha")])
        out, err, code = await self.cli("--config", self.dir)
        self.assertEqual(code, 0, err)
        self.assertIn("Reloaded at ", out)
        self.assertIn("  pipelines: +fresh\n", out)
        self.assertEqual(service.instance.router.pipeline_names(), ["fresh"])

    async def test_cli_refused_exits_1(self) -> None:
        self.port = free_port()
        service = await start_instance(self, self.write())
        self.write(pipelines=[self.pipeline("q", "q.go", "nosuch")])
        out, err, code = await self.cli("--config", self.dir)
        self.assertEqual(code, 1, out)
        self.assertIn("ductile system reload: the instance refused the new config and keeps running the old one:",
                      err)
        self.assertIn("nosuch", err)
        self.assertEqual(service.instance.router.pipeline_names(), [])

    async def test_cli_broken_config_exits_1(self) -> None:
        self.port = free_port()
        await start_instance(self, self.write())
        with open(os.path.join(self.dir, "config.yaml"), "a") as f:
            f.write("plugins: [unclosed\n")
        out, err, code = await self.cli("--config", self.dir)
        self.assertEqual(code, 1, out)
        self.assertIn("ductile system reload: the config does not load", err)

    async def test_cli_api_url_and_key(self) -> None:
        service = await start_instance(self, self.write())
        out, err, code = await self.cli("--config", self.dir, "--api-url", self.url(service, ""), "--json",
                                        env={"DUCTILE_API_KEY": OLD_TOKEN})
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["status"], "reloaded")
        out, err, code = await self.cli("--api-url", self.url(service, ""), "--api-key", "wrong")
        self.assertEqual(code, 1)
        self.assertIn("the instance does not accept this token (invalid token)", err)

    async def test_cli_instance_not_running(self) -> None:
        self.port = free_port()
        self.write()
        out, err, code = await self.cli("--config", self.dir)
        self.assertEqual(code, 1)
        self.assertIn(f"the instance is not reachable at http://127.0.0.1:{self.port}", err)


# -- SIGHUP to a real twistd --------------------------------------------------------


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self._waiting: list[tuple[bytes, int, defer.Deferred[None]]] = []
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def wait_for(self, marker: bytes, count: int = 1) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((marker, count, d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self._waiting):
            marker, count, d = item
            if self.output.count(marker) >= count:
                self._waiting.remove(item)
                d.callback(None)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        for _, _, d in self._waiting:
            d.errback(AssertionError("twistd exited:\n" + self.output.decode()))
        self._waiting = []
        self.ended.callback(None)


class SighupTests(_ReloadFixture):
    async def test_sighup_reloads_twistd(self) -> None:
        """SIGHUP (systemctl reload) makes a real twistd take a new token; a broken config is refused."""
        self.port = free_port()
        self.write()
        proto = _Output()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": self.base}
        transport = reactor.spawnProcess(proto, twistd, [twistd, "-n", "--pidfile=", "ductile", "--config", self.dir],
                                         env=env, path=self.base)

        def stop() -> Any:
            if transport.pid is not None:
                transport.signalProcess("TERM")
            return proto.ended

        self.addCleanup(stop)
        await proto.wait_for(b"lab started:")
        url = f"http://127.0.0.1:{self.port}/jobs"

        async def get(token: str) -> int:
            response = await treq.get(url, headers={"Authorization": f"Bearer {token}"}, persistent=False)
            await response.content()
            return response.code

        self.assertEqual(await get(NEW_TOKEN), 401)
        self.write(tokens=(NEW_TOKEN,))
        os.kill(transport.pid, signal.SIGHUP)
        await proto.wait_for(b"config reloaded:")
        self.assertEqual(await get(NEW_TOKEN), 200)
        self.assertEqual(await get(OLD_TOKEN), 401)

        with open(os.path.join(self.dir, "config.yaml"), "a") as f:
            f.write("plugins: [unclosed\n")
        os.kill(transport.pid, signal.SIGHUP)
        await proto.wait_for(b"config reload refused, still running the previous config")
        self.assertEqual(await get(NEW_TOKEN), 200)
