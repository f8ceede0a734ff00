"""
The HTTP API (contract §6): JSON in and out, bearer-token scopes, and the
root of the twisted.web tree the relay ingress is mounted on.

Routes live in one table (method, path pattern, scopes, handler) served by a
single leaf resource, so an unknown route is a JSON 404 and every handler is
an C{async def} returning C{(status, body)}.
"""
from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from ductile import __version__
from ductile.config.models import Config
from ductile.errors import StorageUnavailable
from ductile.events import Event
from ductile.executor import RELAY_PLUGIN, dispatch_to_spec
from ductile.queue import TERMINAL, JobQueue, JobSpec
from ductile.timestamps import format_rfc3339nano
from ductile.web.auth import Authenticator, AuthError
from ductile.web.json_response import write_json

Handler = Callable[..., Awaitable[tuple[int, Any]]]

#: Synchronous pipeline calls (contract §3.5): defaults as Go's api.* settings.
MAX_CONCURRENT_SYNC = 10
MAX_SYNC_TIMEOUT = 300.0
DEFAULT_SYNC_TIMEOUT = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class RawBody:
    """A non-JSON answer (the Prometheus text of /metrics)."""

    content: bytes
    content_type: bytes


def respond(request: IRequest, status: int, body: Any) -> None:
    """Write a JSON (or raw) answer and finish the request."""
    if isinstance(body, RawBody):
        request.setResponseCode(status)
        request.setHeader(b"content-type", body.content_type)
        request.write(body.content)
    else:
        request.write(write_json(request, status, body))
    request.finish()


@attrs.frozen
class Route:
    method: bytes
    pattern: re.Pattern[str]
    scopes: tuple[str, ...] | None  # None: no authentication
    handler: Handler


def _iso(t: float | None) -> str | None:
    return format_rfc3339nano(t) if t is not None else None


def job_view(job: Mapping[str, Any], with_result: bool = True) -> dict[str, Any]:
    """A job row as the API shows it (times in RFC 3339)."""
    out = {
        "job_id": job["id"],
        "status": job["status"],
        "plugin": job["plugin"],
        "command": job["command"],
        "attempt": job["attempt"],
        "max_attempts": job["max_attempts"],
        "submitted_by": job["submitted_by"],
        "dedupe_key": job["dedupe_key"],
        "pipeline": job["pipeline"],
        "step_id": job["step_id"],
        "parent_job_id": job["parent_job_id"],
        "created_at": _iso(job["created_at"]),
        "started_at": _iso(job["started_at"]),
        "completed_at": _iso(job["completed_at"]),
        "next_retry_at": _iso(job["next_retry_at"]),
    }
    if with_result:
        out["result"] = job["result"]
        out["last_error"] = job["last_error"]
    return out


class ApiLeaf(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, api: "Api") -> None:
        super().__init__()
        self._api = api

    def render(self, request: server.Request) -> Any:
        d = defer.ensureDeferred(self._api.handle(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallback(lambda r: None if request._disconnected else respond(request, *r))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _failed(self, failure: Failure, request: server.Request) -> None:
        if failure.check(defer.CancelledError) or request._disconnected:
            return
        self.log.failure("API request {path} failed", failure, path=request.path)
        respond(request, 500, {"error": "internal error"})


class Api:
    """
    The API's behaviour, independent of twisted.web plumbing.

    @param plugins: loaded plugins by name.
    @param router: the compiled pipelines' router.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: Config,
        queue: JobQueue,
        plugins: Mapping[str, Any],
        router: Any,
        metrics: Any = None,
        ingress_stats: Any = None,
        reloader: Callable[[], "defer.Deferred[Mapping[str, Any]]"] | None = None,
    ) -> None:
        """
        @param reloader: what C{POST /system/reload} calls (the service's
            C{reload}); fires with the report or fails with
            L{ductile.reload.ReloadError}.  Without it the route answers 501.
        """
        self._clock = clock
        self._config = config
        self._queue = queue
        self._plugins = plugins
        self._router = router
        self._metrics = metrics
        self._ingress_stats = ingress_stats
        self._reloader = reloader
        self._auth = Authenticator.from_config(config)
        self._sync_running = 0
        self._started = clock.seconds()
        self.routes: Sequence[Route] = [
            self._route(b"GET", r"/healthz", None, self.healthz),
            self._route(b"GET", r"/jobs", ("jobs:status:ro",), self.list_jobs),
            self._route(b"GET", r"/job/(?P<job_id>[^/]+)", ("jobs:status:ro",), self.get_job),
            self._route(b"GET", r"/job/(?P<job_id>[^/]+)/tree", ("jobs:tree:ro",), self.job_tree),
            self._route(b"POST", r"/plugin/(?P<plugin>[^/]+)/(?P<command>[^/]+)", ("plugin:invoke:ro", "plugin:rw"),
                        self.invoke_plugin),
            self._route(b"POST", r"/pipeline/(?P<name>[^/]+)", ("plugin:rw",), self.trigger_pipeline),
            self._route(b"GET", r"/relay/deliveries", ("relay:ro",), self.relay_deliveries),
            self._route(b"POST", r"/relay/deliveries/(?P<job_id>[^/]+)/replay", ("relay:rw",), self.relay_replay),
            self._route(b"POST", r"/relay/(?P<instance>[^/]+)", ("relay:rw",), self.relay_enqueue),
            self._route(b"GET", r"/metrics", ("metrics:ro",), self.metrics),
            self._route(b"POST", r"/system/reload", ("system:rw",), self.system_reload),
        ]

    @staticmethod
    def _route(method: bytes, pattern: str, scopes: tuple[str, ...] | None, handler: Handler) -> Route:
        return Route(method, re.compile(pattern + r"/?\Z"), scopes, handler)

    def resource(self) -> resource.Resource:
        """The root of the web tree: API routes, with room for the relay ingress."""
        leaf = ApiLeaf(self)

        class Root(resource.Resource):
            def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
                return leaf

        return Root()

    async def handle(self, request: server.Request) -> tuple[int, Any]:
        path = request.path.decode("utf-8", "replace")
        matched_path = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            matched_path = True
            if route.method != request.method:
                continue
            try:
                principal = None
                if route.scopes is not None:
                    principal = self._auth.authorize(request.getHeader(b"authorization"), route.scopes)
                return await route.handler(request, principal, **m.groupdict())
            except AuthError as e:
                return e.status, {"error": e.message}
            except ApiError as e:
                return e.status, {"error": e.message}
            except StorageUnavailable:
                request.setHeader(b"retry-after", b"5")
                return 503, {"error": "storage unavailable"}
        if matched_path:
            return 405, {"error": "method not allowed"}
        return 404, {"error": "not found"}

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _body(request: server.Request) -> dict[str, Any]:
        request.content.seek(0)
        raw = request.content.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid JSON body")
        if not isinstance(body, dict):
            raise ApiError(400, "invalid JSON body")
        return body

    @staticmethod
    def _arg(request: server.Request, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    # -- handlers -----------------------------------------------------------

    async def healthz(self, request: server.Request, principal: Any) -> tuple[int, Any]:
        counts = await self._queue.counts()
        return 200, {
            "status": "ok",
            "service": self._config.service.name,
            "uptime_seconds": int(self._clock.seconds() - self._started),
            "queue_depth": counts.get("queued", 0) + counts.get("running", 0),
            "plugins_loaded": len(self._plugins),
            "version": __version__,
        }

    async def list_jobs(self, request: server.Request, principal: Any) -> tuple[int, Any]:
        try:
            limit = min(200, max(1, int(self._arg(request, "limit") or 50)))
        except ValueError:
            raise ApiError(400, "limit must be an integer")
        jobs = await self._queue.list_jobs(
            status=self._arg(request, "status"), plugin=self._arg(request, "plugin"),
            command=self._arg(request, "command"), limit=limit,
        )
        with_result = principal is None or principal.allows(("jobs:result:ro",))
        return 200, {"jobs": [job_view(j, with_result) for j in jobs], "total": len(jobs)}

    async def get_job(self, request: server.Request, principal: Any, job_id: str) -> tuple[int, Any]:
        job = await self._queue.get_job(job_id)
        if job is None:
            raise ApiError(404, "job not found")
        return 200, job_view(job, principal.allows(("jobs:result:ro",)))

    async def job_tree(self, request: server.Request, principal: Any, job_id: str) -> tuple[int, Any]:
        tree = await self._queue.job_tree(job_id)
        if not tree:
            raise ApiError(404, "job not found")
        return 200, {"job_id": job_id, "tree": [job_view(j) for j in tree]}

    async def invoke_plugin(self, request: server.Request, principal: Any, plugin: str, command: str) -> tuple[int, Any]:
        loaded = self._plugins.get(plugin)
        if loaded is None:
            raise ApiError(400, "plugin not found")
        if not loaded.supports(command):
            raise ApiError(400, "command not supported by plugin")
        cmd = loaded.commands[command]
        if getattr(cmd, "type", "write") != "read" and not principal.allows(("plugin:rw",)):
            raise ApiError(403, "token lacks scope (needs one of: plugin:rw)")
        body = self._body(request)
        payload = body.get("payload", {})
        if command == "handle":
            if not isinstance(payload, dict):
                raise ApiError(400, "payload must be a JSON object")
            payload = Event.create("api.trigger", payload, "api", self._clock.seconds()).to_json()
        elif not isinstance(payload, dict):
            raise ApiError(400, "payload must be a JSON object")
        settings = self._config.plugin_config(plugin)
        [result] = await self._queue.enqueue(
            [JobSpec(plugin, command, payload, submitted_by="api", max_attempts=settings.retry.max_attempts)]
        )
        return 202, {"job_id": result.job_id, "status": "queued", "plugin": plugin, "command": command}

    async def trigger_pipeline(self, request: server.Request, principal: Any, name: str) -> tuple[int, Any]:
        body = self._body(request)
        payload = body.get("payload", {})
        if not isinstance(payload, dict):
            raise ApiError(400, "payload must be a JSON object")
        baggage = body.get("baggage", {})
        if not isinstance(baggage, dict):
            raise ApiError(400, "baggage must be a JSON object")
        try:
            pipeline = self._router.pipeline(name)
        except KeyError:
            raise ApiError(404, f"pipeline {name!r} not found")
        wait = self._sync_budget(request, pipeline)
        event = Event.create(pipeline.on or "api.pipeline.trigger", payload, "api", self._clock.seconds(),
                             dedupe_key=body.get("dedupe_key") or None)
        dispatches = self._router.route_pipeline(name, event, baggage)
        if wait is not None and len(dispatches) > 1:
            raise ApiError(400, f"pipeline {name!r} starts with {len(dispatches)} parallel steps; "
                                "a synchronous call needs exactly one (use ?async=true)")
        specs = [dispatch_to_spec(d, self._config, submitted_by="api", source_event_id=event.event_id)
                 for d in dispatches]
        if not specs:
            return 202, {"job_id": None, "status": "skipped", "plugin": "pipeline", "command": name}
        if wait is not None and self._sync_running >= MAX_CONCURRENT_SYNC:
            raise ApiError(503, "too many concurrent synchronous requests")
        results = await self._queue.enqueue(specs)
        job_id = results[0].job_id
        if wait is None:
            return 202, {"job_id": job_id, "status": "queued", "plugin": "pipeline", "command": name}
        return await self._wait_for_tree(job_id, wait)

    def _sync_budget(self, request: server.Request, pipeline: Any) -> float | None:
        """
        Seconds to wait for the pipeline's tree, or None for an async call:
        C{?wait=DURATION} asks for it, C{execution_mode: synchronous} makes it
        the default, C{?async=true} opts out; capped at L{MAX_SYNC_TIMEOUT}.
        """
        from ductile.config import parse_duration

        if (self._arg(request, "async") or "").lower() == "true":
            return None
        wait = self._arg(request, "wait")
        if wait is not None:
            try:
                budget = parse_duration(wait) if not wait.replace(".", "", 1).isdigit() else float(wait)
            except ValueError:
                raise ApiError(400, f"wait must be a duration such as 30s, got {wait!r}")
        elif pipeline.execution_mode == "synchronous":
            timeout = pipeline.timeout
            budget = parse_duration(str(timeout)) if timeout else DEFAULT_SYNC_TIMEOUT
        else:
            return None
        return max(0.0, min(budget, MAX_SYNC_TIMEOUT))

    async def _wait_for_tree(self, job_id: str, budget: float) -> tuple[int, Any]:
        """
        Wait until every job in the tree is terminal.  Completion and its
        successors commit together, so one read of a terminal tree is final.
        """
        started = self._clock.seconds()
        self._sync_running += 1
        try:
            while True:
                changed = self._queue.changed()
                tree = await self._queue.job_tree(job_id)
                if tree and all(j["status"] in TERMINAL for j in tree):
                    break
                remaining = started + budget - self._clock.seconds()
                if remaining <= 0:
                    return 202, {"job_id": job_id, "status": "running", "timeout_exceeded": True,
                                 "message": "Pipeline still running after timeout."}
                changed.addTimeout(remaining, self._clock)
                try:
                    await changed
                except defer.TimeoutError:
                    pass
        finally:
            self._sync_running -= 1
        failed = [j["status"] for j in tree if j["status"] in ("failed", "timed_out", "dead")]
        last = tree[-1]
        return 200, {
            "job_id": job_id,
            "status": failed[-1] if failed else "succeeded",
            "duration_ms": int((self._clock.seconds() - started) * 1000),
            "result": last["result"],
            "tree": [job_view(j) for j in tree],
        }

    async def relay_deliveries(self, request: server.Request, principal: Any) -> tuple[int, Any]:
        jobs = await self._queue.list_jobs(status=self._arg(request, "status"), plugin=RELAY_PLUGIN,
                                           limit=min(200, int(self._arg(request, "limit") or 50)))
        out = []
        for job in jobs:
            view = job_view(job)
            relay = job["payload"].get("relay") or {}
            view["to"] = relay.get("to")
            view["event_type"] = relay.get("event_type")
            view["attempts"] = await self._queue.relay_attempts(job["id"])
            out.append(view)
        return 200, {"deliveries": out, "total": len(out)}

    async def relay_replay(self, request: server.Request, principal: Any, job_id: str) -> tuple[int, Any]:
        job = await self._queue.get_job(job_id)
        if job is None or job["plugin"] != RELAY_PLUGIN:
            raise ApiError(404, "delivery not found")
        try:
            new_id = await self._queue.replay(job_id)
        except ValueError as e:
            raise ApiError(409, str(e))
        return 202, {"job_id": new_id, "replay_of": job_id, "status": "queued"}

    async def relay_enqueue(self, request: server.Request, principal: Any, instance: str) -> tuple[int, Any]:
        """
        Take an envelope for durable delivery to C{instance}: the relay job
        is committed before this answers 202, then sent with retries.
        """
        from ductile.events import RELAY_EVENT_TYPE
        from ductile.relay.envelope import EnvelopeError, decode_envelope

        target = self._config.enabled_instance(instance)
        if target is None:
            raise ApiError(404, f'relay instance "{instance}" not configured')
        request.content.seek(0)
        try:
            envelope = decode_envelope(request.content.read())
        except EnvelopeError as e:
            raise ApiError(400, str(e))
        event_type = envelope.event_type.strip()
        if not event_type:
            raise ApiError(400, "event.type is required")
        if not RELAY_EVENT_TYPE.match(event_type):
            raise ApiError(400, "event.type must use lower-case dotted form")
        if target.allow and event_type not in target.allow:
            raise ApiError(422, f'relay instance "{target.name}" does not allow event type "{event_type}"')
        event = Event.create(event_type, envelope.payload, "api", self._clock.seconds(),
                             dedupe_key=envelope.dedupe_key or None)
        payload = event.to_json()
        origin = {k: v for k, v in attrs.asdict(envelope.origin).items() if v and k != "instance"}
        payload["relay"] = {
            "to": target.name, "event_type": event_type, "dedupe_key": envelope.dedupe_key or None,
            "payload": dict(envelope.payload), "baggage": dict(envelope.baggage), "origin": origin,
        }
        [result] = await self._queue.enqueue([JobSpec(
            RELAY_PLUGIN, "handle", payload, submitted_by="api", max_attempts=target.retry.max_attempts,
            dedupe_key=envelope.dedupe_key or None,
        )])
        return 202, {"job_id": result.job_id, "status": "queued", "to": target.name, "event_type": event_type,
                     "deduplicated": result.deduplicated}

    def reconfigure(self, config: Config, plugins: Mapping[str, Any], router: Any) -> None:
        """
        Serve a reloaded config: its tokens and scopes, plugins and pipelines
        apply to requests from now on (a request already being handled
        finishes with what it started with).
        """
        self._config = config
        self._plugins = plugins
        self._router = router
        self._auth = Authenticator.from_config(config)

    async def system_reload(self, request: server.Request, principal: Any) -> tuple[int, Any]:
        """
        C{POST /system/reload}: 200 with the report, or 409 with the reason
        the new config was refused (the old one is still running).
        """
        from ductile.reload import ReloadError

        if self._reloader is None:
            raise ApiError(501, "reload not supported")
        self.log.info("config reload requested by API token {label}", label=principal.label)
        # The reload must not be cut short by the client going away (the
        # request's Deferred is cancelled then): wait on a shield instead.
        reloading = self._reloader()
        shield: defer.Deferred[Any] = defer.Deferred()

        def done(result: Any) -> None:
            if not shield.called:
                if isinstance(result, Failure):
                    shield.errback(result)
                else:
                    shield.callback(result)
            elif isinstance(result, Failure) and not result.check(ReloadError):
                self.log.failure("config reload failed", result)

        reloading.addBoth(done)
        try:
            report = await shield
        except ReloadError as e:
            raise ApiError(409, str(e))
        return 200, report

    async def metrics(self, request: server.Request, principal: Any) -> tuple[int, Any]:
        return 200, await self.metrics_body()

    async def metrics_body(self) -> RawBody:
        """The Prometheus text, for /metrics here and on C{metrics.listen}."""
        from ductile.metrics import Metrics, render
        from ductile.queue import STATUSES

        text = render(
            self._metrics or Metrics(),
            self._ingress_stats,
            self._queue.writer_stats,
            await self._queue.counts(),
            await self._queue.oldest_queued_age(),
            STATUSES,
        )
        return RawBody(text.encode("utf-8"), b"text/plain; version=0.0.4; charset=utf-8")

    def metrics_resource(self) -> resource.Resource:
        """
        The root of the separate C{metrics.listen} site: C{GET /metrics}
        without a token (that listener is for a scraper on a trusted
        network); anything else is 404.
        """
        api = self
        leaf = ApiLeaf(api)  # for its failure handling

        class MetricsOnly(resource.Resource):
            isLeaf = True

            def render_GET(self, request: server.Request) -> Any:
                if request.path.rstrip(b"/") != b"/metrics":
                    return write_json(request, 404, {"error": "not found"})
                d = defer.ensureDeferred(api.metrics_body())
                d.addCallback(lambda body: None if request._disconnected else respond(request, 200, body))
                d.addErrback(leaf._failed, request)
                return server.NOT_DONE_YET

        return MetricsOnly()
