"""
The HTTP API on a running instance: scopes, endpoints, error shapes.
"""
from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from ductile.testing.instance import port_of, read_records, start_instance, wait_until, write_config
from ductile.testing.plugins import write_recorder

TOKENS = {
    "all": ["*"],
    "invoke": ["plugin:invoke:ro"],
    "writer": ["plugin:rw"],
    "status": ["jobs:status:ro"],
    "jobs": ["jobs:ro"],
    "relay": ["relay:ro"],
}


class ApiFixture(TestCase):
    """A running instance with recorder plugins, a two-step pipeline and scoped tokens."""

    timeout = 30

    async def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "recorder", commands=("handle", "poll"))
        write_recorder(plugins, "second")
        self.records = os.path.join(base, "records.jsonl")
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "api-test"},
            "plugin_roots": [plugins],
            "plugins": {"recorder": {"config": {"record_file": self.records, "emit": "step.one"}},
                        "second": {"config": {"record_file": self.records}}},
            "api": {"enabled": True, "listen": "127.0.0.1:0",
                    "auth": {"tokens": [{"token": f"tok-{n}", "scopes": s} for n, s in TOKENS.items()]}},
            "pipelines": [{"name": "chain", "on": "chain.start",
                           "steps": [{"id": "one", "uses": "recorder"}, {"id": "two", "uses": "second"}]}],
        }})
        self.service = await start_instance(self, cfg)
        self.base_url = f"http://127.0.0.1:{port_of(self.service)}"

    async def call(self, method: str, path: str, token: str | None = "all", body: Any = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer tok-{token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = await treq.request(method, self.base_url + path, data=data, headers=headers, persistent=False)
        text = await response.content()
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response.code, json.loads(text)

    async def _done(self) -> bool:
        counts = await self.service.queue.counts()
        return counts.get("queued", 0) + counts.get("running", 0) == 0



class ApiTests(ApiFixture):
    async def test_healthz_needs_no_token(self) -> None:
        """/healthz answers without credentials and reports queue depth and plugins."""
        code, body = await self.call("GET", "/healthz", token=None)
        self.assertEqual((code, body["status"], body["service"], body["plugins_loaded"]), (200, "ok", "api-test", 2))
        self.assertEqual(body["queue_depth"], 0)

    async def test_authentication_and_scopes(self) -> None:
        """401 without or with an unknown token, 403 without the scope."""
        self.assertEqual(await self.call("GET", "/jobs", token=None), (401, {"error": "missing bearer token"}))
        self.assertEqual(await self.call("GET", "/jobs", token="nope"), (401, {"error": "invalid token"}))
        code, body = await self.call("GET", "/jobs", token="relay")
        self.assertEqual(code, 403)
        self.assertIn("jobs:status:ro", body["error"])
        self.assertEqual((await self.call("GET", "/jobs", token="status"))[0], 200)
        self.assertEqual((await self.call("GET", "/jobs", token="jobs"))[0], 200)
        self.assertEqual((await self.call("GET", "/relay/deliveries", token="relay"))[0], 200)
        self.assertEqual((await self.call("GET", "/relay/deliveries", token="jobs"))[0], 403)

    async def test_invoke_plugin_and_read_job(self) -> None:
        """
        POST /plugin/{p}/{cmd} queues a job (202) that runs; GET /job/{id}
        shows the result only to a token with jobs:result:ro.
        """
        code, body = await self.call("POST", "/plugin/recorder/poll", token="writer", body={"payload": {"n": 1}})
        self.assertEqual((code, body["status"], body["plugin"], body["command"]), (202, "queued", "recorder", "poll"))
        job_id = body["job_id"]
        await wait_until(self.service, self._done)
        code, job = await self.call("GET", f"/job/{job_id}", token="jobs")
        self.assertEqual((code, job["status"], job["result"]), (200, "succeeded", "recorder ran poll"))
        code, job = await self.call("GET", f"/job/{job_id}", token="status")
        self.assertEqual((code, job["status"]), (200, "succeeded"))
        self.assertNotIn("result", job)
        [record] = read_records(self.records)
        self.assertEqual(record["payload"], {"n": 1})
        self.assertEqual(await self.call("GET", "/job/no-such-job", token="jobs"), (404, {"error": "job not found"}))

    async def test_invoke_rejections(self) -> None:
        """Unknown plugin or command, bad JSON, non-object payload, write command without plugin:rw."""
        self.assertEqual(await self.call("POST", "/plugin/ghost/poll"), (400, {"error": "plugin not found"}))
        self.assertEqual(await self.call("POST", "/plugin/recorder/nope"),
                         (400, {"error": "command not supported by plugin"}))
        self.assertEqual(await self.call("POST", "/plugin/recorder/poll", raw=b"{nope"),
                         (400, {"error": "invalid JSON body"}))
        self.assertEqual(await self.call("POST", "/plugin/recorder/poll", body={"payload": [1]}),
                         (400, {"error": "payload must be a JSON object"}))
        code, body = await self.call("POST", "/plugin/recorder/poll", token="invoke")
        self.assertEqual((code, body["error"]), (403, "token lacks scope (needs one of: plugin:rw)"))

    async def test_pipeline_trigger_and_tree(self) -> None:
        """
        POST /pipeline/{name} starts the pipeline (202); the job tree holds
        both steps once they ran, in order.
        """
        code, body = await self.call("POST", "/pipeline/chain", token="writer", body={"payload": {"x": 1}})
        self.assertEqual((code, body["status"], body["command"]), (202, "queued", "chain"))
        await wait_until(self.service, self._done)
        code, tree = await self.call("GET", f"/job/{body['job_id']}/tree", token="jobs")
        self.assertEqual(code, 200)
        self.assertEqual([(j["plugin"], j["step_id"], j["status"]) for j in tree["tree"]],
                         [("recorder", "one", "succeeded"), ("second", "two", "succeeded")])
        self.assertEqual(await self.call("POST", "/pipeline/nope", token="writer"),
                         (404, {"error": "pipeline 'nope' not found"}))

    async def test_unknown_route_and_method(self) -> None:
        """Unknown routes are JSON 404s; a known route with another method is 405."""
        self.assertEqual(await self.call("GET", "/nowhere"), (404, {"error": "not found"}))
        self.assertEqual(await self.call("DELETE", "/jobs"), (405, {"error": "method not allowed"}))


class MetricsTests(TestCase):
    timeout = 30

    async def test_metrics_text_parses_and_moves(self) -> None:
        """
        /metrics is Prometheus text: every sample line belongs to a declared
        family; job and plugin figures move when a job runs; metrics:ro is
        required.
        """
        base = os.path.abspath(self.mktemp())
        plugins = os.path.join(base, "plugins")
        write_recorder(plugins, "recorder")
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "m"},
            "plugin_roots": [plugins],
            "api": {"enabled": True, "listen": "127.0.0.1:0", "auth": {"tokens": [
                {"token": "tok-m", "scopes": ["metrics:ro"]}, {"token": "tok-w", "scopes": ["plugin:rw"]}]}},
            "tokens": [{"name": "relay", "key": "s3cr3t-value"}],
            "remote_ingress": {"peers": [{"name": "peer-a", "secret_ref": "relay"}]},
        }})
        service = await start_instance(self, cfg)
        url = f"http://127.0.0.1:{port_of(service)}"

        async def scrape(token: str = "tok-m") -> tuple[int, str]:
            r = await treq.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, persistent=False)
            return r.code, (await r.content()).decode()

        self.assertEqual((await scrape("tok-w"))[0], 403)
        code, before = await scrape()
        self.assertEqual(code, 200)
        families: dict[str, str] = {}
        for line in before.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                families[name] = kind
            elif line and not line.startswith("#"):
                name = line.split("{")[0].split(" ")[0]
                base_name = name.rsplit("_", 1)[0] if name.endswith(("_bucket", "_sum", "_count")) else name
                self.assertTrue(name in families or base_name in families, line)
                float(line.rsplit(" ", 1)[1])
        self.assertEqual(families["ductile_relay_ingress_rejected_total"], "counter")
        self.assertIn('ductile_jobs{status="succeeded"} 0', before)

        await treq.post(url + "/ingest/peer/nobody", data=b"{}", persistent=False)
        r = await treq.post(url + "/plugin/recorder/poll", headers={"Authorization": "Bearer tok-w"},
                            persistent=False)
        await r.content()

        async def done() -> bool:
            return (await service.queue.counts()).get("succeeded", 0) == 1

        await wait_until(service, done)
        _, after = await scrape()
        self.assertIn('ductile_jobs{status="succeeded"} 1', after)
        self.assertIn('ductile_relay_ingress_rejected_total{reason="unknown_peer"} 1', after)
        self.assertIn('ductile_plugin_run_duration_seconds_count{outcome="ok",plugin="recorder"} 1', after)
        self.assertNotIn("s3cr3t-value", after)


class ListenEndpointTests(TestCase):
    def test_forms(self) -> None:
        """Go-style host:port becomes a TCP endpoint; endpoint strings pass through."""
        from ductile.endpoints import go_style_to_endpoint as listen_endpoint

        self.assertEqual(listen_endpoint("127.0.0.1:8080"), "tcp:8080:interface=127.0.0.1")
        self.assertEqual(listen_endpoint(":8080"), "tcp:8080")
        self.assertEqual(listen_endpoint("[::1]:8080"), r"tcp:8080:interface=\:\:1")
        self.assertEqual(listen_endpoint("tcp:8080"), "tcp:8080")
        self.assertEqual(listen_endpoint("ssl:8443"), "ssl:8443")
        self.assertEqual(listen_endpoint("unix:/run/d.sock:mode=600"), "unix:/run/d.sock:mode=600")


class SyncPipelineTests(ApiFixture):
    """POST /pipeline/{name}?wait=: a bounded synchronous answer (contract §3.5)."""

    async def test_wait_returns_the_finished_tree(self) -> None:
        code, body = await self.call("POST", "/pipeline/chain?wait=20s", token="writer", body={"payload": {"x": 1}})
        self.assertEqual((code, body["status"]), (200, "succeeded"), body)
        self.assertEqual([j["plugin"] for j in body["tree"]], ["recorder", "second"])
        self.assertEqual(body["result"], "second ran handle")
        self.assertIsInstance(body["duration_ms"], int)

    async def test_wait_timeout_answers_202_running(self) -> None:
        code, body = await self.call("POST", "/pipeline/chain?wait=0s", token="writer", body={})
        self.assertEqual((code, body["status"], body["timeout_exceeded"]), (202, "running", True))
        await wait_until(self.service, self._done)

    async def test_bad_wait_value(self) -> None:
        code, body = await self.call("POST", "/pipeline/chain?wait=soon", token="writer", body={})
        self.assertEqual((code, body["error"]), (400, "wait must be a duration such as 30s, got 'soon'"))


class SeparateMetricsListenerTests(TestCase):
    timeout = 30

    async def test_metrics_listen_serves_without_token(self) -> None:
        """metrics.listen serves /metrics without a token, and nothing else."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "plugins"))
        cfg = write_config(os.path.join(base, "cfg"), {"config.yaml": {
            "service": {"name": "m"}, "plugin_roots": ["../plugins"],
            "api": {"enabled": True, "listen": "127.0.0.1:0"},
            "metrics": {"listen": "127.0.0.1:0"},
        }})
        service = await start_instance(self, cfg)
        url = f"http://127.0.0.1:{service.metrics_port.getHost().port}"
        r = await treq.get(url + "/metrics", persistent=False)
        text = (await r.content()).decode()
        self.assertEqual(r.code, 200)
        self.assertIn("# TYPE ductile_queue_depth gauge", text)
        r = await treq.get(url + "/jobs", persistent=False)
        self.assertEqual((r.code, json.loads(await r.content())), (404, {"error": "not found"}))
