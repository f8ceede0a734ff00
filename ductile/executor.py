"""
Runs one claimed job to the end of its attempt and records the outcome.

Plugin jobs go to the process runner; C{core.relay} jobs go to the relay
sender.  Either way the completion — status, log, plugin state and the jobs
the produced events route to — is committed in one transaction
(L{JobQueue.complete}), so a crash can neither lose a successor nor leave a
finished job without one.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ductile.backoff import job_retry_delay
from ductile.config.models import Config
from ductile.errors import StorageUnavailable
from ductile.events import Event
from ductile.hooks import with_hooks
from ductile.metrics import Metrics
from ductile.queue import (
    DEAD,
    FAILED,
    QUEUED,
    SUCCEEDED,
    TIMED_OUT,
    ClaimedJob,
    Completion,
    JobQueue,
    JobSpec,
    RelayAttemptRecord,
)
from ductile.relay.envelope import Envelope, Origin
from ductile.timestamps import format_rfc3339nano

RELAY_PLUGIN = "core.relay"
STEP_SUCCEEDED = "ductile.step.succeeded"


def dispatch_to_spec(
    dispatch: Any,
    config: Config,
    *,
    submitted_by: str,
    source_event_id: str | None,
    context_parent_id: str | None = None,
) -> JobSpec:
    """
    Turn a router L{Dispatch} into a job to enqueue.

    A C{handle} job's payload is the whole event (contract §1.9); a relay
    step's payload also carries the resolved relay target.
    """
    payload: dict[str, Any] = dispatch.event.to_json()
    if dispatch.plugin == RELAY_PLUGIN and dispatch.relay is not None:
        relay = dispatch.relay
        payload["relay"] = {
            "to": relay.to,
            "event_type": relay.event_type,
            "dedupe_key": relay.dedupe_key,
            "payload": dict(relay.payload),
            "baggage": dict(relay.baggage),
        }
        instance = config.enabled_instance(relay.to)
        max_attempts = instance.retry.max_attempts if instance else 1
    else:
        max_attempts = config.plugin_config(dispatch.plugin).retry.max_attempts
    return JobSpec(
        plugin=dispatch.plugin,
        command=dispatch.command,
        payload=payload,
        submitted_by=submitted_by,
        max_attempts=max_attempts,
        dedupe_key=dispatch.dedupe_key,
        source_event_id=source_event_id,
        context=dict(dispatch.context),
        context_parent_id=context_parent_id,
        pipeline=dispatch.pipeline,
        step_id=dispatch.step_id,
        error=dispatch.error,
    )


class JobExecutor:
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        queue: JobQueue,
        config: Config,
        plugins: Mapping[str, Any],
        runner: Any,
        router: Any,
        sender: Any | None = None,
        rng: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock
        self._queue = queue
        self._config = config
        self._plugins = plugins
        self._runner = runner
        self._router = router
        self._sender = sender
        self._rng = rng
        self._metrics = metrics if metrics is not None else Metrics()
        #: Set by the service when its shutdown grace ran out and it stops the
        #: running plugins: their attempts were ours to cut short, not theirs
        #: to fail, so they go back to the queue as the same attempt.
        self.interrupting = False
        #: Whether any pipeline is triggered by C{ductile.step.succeeded}
        #: (worked out once: an executor serves one router, see the service's reload).
        self._step_succeeded_triggers: bool | None = None

    def __call__(self, job: ClaimedJob) -> defer.Deferred[None]:
        if job.plugin == RELAY_PLUGIN:
            return defer.ensureDeferred(self._run_relay(job))
        return defer.ensureDeferred(self._run_plugin(job))

    # -- plugin jobs ----------------------------------------------------

    async def _run_plugin(self, job: ClaimedJob) -> None:
        from ductile.plugins.protocol import build_request, normalize_events

        plugin = self._plugins.get(job.plugin)
        if plugin is None:
            await self._finish(job, Completion(FAILED, error=f"plugin {job.plugin!r} is not loaded"))
            return
        if not plugin.supports(job.command):
            await self._finish(
                job, Completion(FAILED, error=f"command {job.command!r} not supported by plugin {job.plugin!r}")
            )
            return
        settings = self._config.plugin_config(job.plugin)
        timeout = settings.timeout_for(job.command)
        now = self._clock.seconds()
        state = dict(job.state)
        context = dict(job.context)
        context["ductile_plugin"] = job.plugin
        event = None
        if job.command == "handle":
            event = dict(job.payload) if "type" in job.payload else {"type": "api.trigger", "payload": dict(job.payload)}
        request = build_request(
            job_id=job.id,
            command=job.command,
            config=dict(settings.config),
            state=state,
            payload=dict(job.payload),
            context=context,
            event=event,
            deadline_at=format_rfc3339nano(now + timeout),
        )
        self.log.info(
            "job {job_id} starting {plugin}.{command} (attempt {attempt}/{max_attempts})",
            job_id=job.id, plugin=job.plugin, command=job.command, attempt=job.attempt,
            max_attempts=job.max_attempts,
        )
        # The worker is handed on as soon as the process ends, before its
        # output is parsed and routed (see JobQueue.ending).
        outcome = await self._runner.run(plugin, request, timeout, on_exit=lambda: self._queue.ending(job))
        self._metrics.plugin_run(
            job.plugin, "ok" if outcome.error is None else ("timed_out" if outcome.timed_out else "error"),
            outcome.duration,
        )
        if outcome.response is not None:
            self._log_plugin_lines(job, outcome.response.logs)
        if outcome.response is not None and outcome.error is None:
            response = outcome.response
            try:
                events = normalize_events(response, job.plugin, self._clock.seconds())
                successors = self._route(job, events, response.result)
            except Exception as e:
                self.log.failure("routing the events of job {job_id} failed", job_id=job.id)
                await self._finish(job, Completion(FAILED, error=f"routing failed: {e}", stdout=outcome.stdout,
                                                   stderr=outcome.stderr_tail, duration=outcome.duration))
                return
            await self._finish(
                job,
                Completion(
                    SUCCEEDED,
                    result=response.result,
                    stdout=outcome.stdout,
                    stderr=outcome.stderr_tail,
                    duration=outcome.duration,
                    state_updates=response.state_updates,
                    successors=successors,
                ),
            )
            return
        error = outcome.error or "plugin failed"
        terminal = TIMED_OUT if outcome.timed_out else FAILED
        if self.interrupting:
            self.log.warn("job {job_id} ({plugin}) interrupted by shutdown; it runs again after restart",
                          job_id=job.id, plugin=job.plugin)
            await self._finish(job, Completion(QUEUED, error="interrupted by shutdown", count_attempt=False))
            return
        if outcome.retryable and job.attempt < job.max_attempts:
            delay = job_retry_delay(job.attempt, settings.retry.backoff_base, self._rng)
            completion = Completion(
                QUEUED, error=error, stdout=outcome.stdout, stderr=outcome.stderr_tail,
                duration=outcome.duration, next_retry_at=self._clock.seconds() + delay,
            )
            self.log.warn(
                "job {job_id} ({plugin}) attempt {attempt} failed: {error}; retrying in {delay:.1f}s",
                job_id=job.id, plugin=job.plugin, attempt=job.attempt, error=error, delay=delay,
            )
        else:
            completion = Completion(
                terminal, error=error, stdout=outcome.stdout, stderr=outcome.stderr_tail, duration=outcome.duration
            )
            self.log.warn(
                "job {job_id} ({plugin}) {status}: {error}", job_id=job.id, plugin=job.plugin, status=terminal,
                error=error,
            )
        await self._finish(job, completion)

    def _log_plugin_lines(self, job: ClaimedJob, logs: Sequence[Any]) -> None:
        """Relay the plugin's own C{logs} entries into the service log."""
        levels = {"debug": self.log.debug, "info": self.log.info, "warn": self.log.warn,
                  "warning": self.log.warn, "error": self.log.error}
        for entry in logs or ():
            if not isinstance(entry, dict):
                continue
            emit = levels.get(str(entry.get("level", "info")).lower(), self.log.info)
            emit("plugin {plugin} (job {job_id}): {plugin_message}", plugin=job.plugin, job_id=job.id,
                 plugin_message=str(entry.get("message", ""))[:2000])

    def _route(self, job: ClaimedJob, events: Sequence[Event], result: Any) -> list[JobSpec]:
        """Successor jobs for what a finished step produced."""
        if not events and job.pipeline:
            events = [Event.create(STEP_SUCCEEDED, {"result": result}, job.plugin, self._clock.seconds())]
        specs: list[JobSpec] = []
        for event in events:
            if job.pipeline:
                dispatches = self._router.route_next(event, job.context, job.plugin)
            else:
                dispatches = self._router.route_root(event, {}, source_plugin=job.plugin)
            specs += [
                dispatch_to_spec(
                    d, self._config, submitted_by=job.plugin, source_event_id=event.event_id,
                    context_parent_id=job.context_id,
                )
                for d in dispatches
            ]
        return specs

    # -- relay jobs -----------------------------------------------------

    async def _run_relay(self, job: ClaimedJob) -> None:
        from ductile.relay.outcome import next_delay

        relay = job.payload.get("relay") or {}
        target = relay.get("to", "")
        # Given by whoever queued the delivery (the API / `relay send --queue`).
        origin = relay.get("origin") or {}
        event = Event.from_json(job.payload)
        if self._sender is None:
            await self._finish(job, Completion(DEAD, error="relay sender is not configured"))
            return
        envelope = Envelope(
            event_type=relay.get("event_type") or event.type,
            payload=relay.get("payload", event.payload),
            dedupe_key=relay.get("dedupe_key") or "",
            origin=Origin(
                instance=self._config.service.name,
                plugin=origin.get("plugin") or RELAY_PLUGIN,
                job_id=origin.get("job_id") or job.id,
                event_id=origin.get("event_id") or event.event_id,
            ),
            baggage=relay.get("baggage") or {},
        )
        outcome = await self._sender.attempt(target, envelope)
        self._metrics.relay_attempt(target, outcome.kind, outcome.duration)
        record = RelayAttemptRecord(
            instance=target, outcome=outcome.kind, status_code=outcome.status, error=outcome.error,
            duration=outcome.duration,
        )
        if outcome.kind == "accepted":
            acceptance = dict(outcome.acceptance or {})
            result = {"status": "relayed", "to": target, "event": envelope.event_type, "accepted": acceptance}
            self.log.info(
                "relay job {job_id} delivered {event_type} to {instance} (receiver job {receiver_job_id})",
                job_id=job.id, event_type=envelope.event_type, instance=target,
                receiver_job_id=acceptance.get("job_id"),
            )
            successors: list[JobSpec] = []
            if job.pipeline and self._step_succeeded_may_route(job):
                succeeded = Event.create(
                    STEP_SUCCEEDED,
                    {
                        "relay_to": target,
                        "relay_event_type": envelope.event_type,
                        "relay_receiver_event_id": acceptance.get("receiver_event_id"),
                        "relay_receiver_peer": acceptance.get("peer"),
                        "relay_receiver_job_id": acceptance.get("job_id"),
                        "relay_acceptance_status": acceptance.get("status"),
                        "relay_acceptance_event_id": acceptance.get("receiver_event_id"),
                    },
                    RELAY_PLUGIN,
                    self._clock.seconds(),
                )
                successors = [
                    dispatch_to_spec(
                        d, self._config, submitted_by=RELAY_PLUGIN, source_event_id=succeeded.event_id,
                        context_parent_id=job.context_id,
                    )
                    for d in self._router.route_next(succeeded, job.context, RELAY_PLUGIN)
                ]
            await self._finish(
                job, Completion(SUCCEEDED, result=result, duration=outcome.duration, successors=successors,
                                relay_attempt=record)
            )
            return
        instance = self._config.enabled_instance(target)
        if outcome.kind == "retryable" and instance is not None and job.attempt < job.max_attempts:
            delay = next_delay(job.attempt, instance.retry, self._rng, outcome.retry_after)
            self.log.warn(
                "relay job {job_id} to {instance} attempt {attempt} failed: {error}; retrying in {delay:.1f}s",
                job_id=job.id, instance=target, attempt=job.attempt, error=outcome.error, delay=delay,
            )
            await self._finish(
                job, Completion(QUEUED, error=outcome.error, duration=outcome.duration,
                                next_retry_at=self._clock.seconds() + delay, relay_attempt=record)
            )
            return
        self.log.error(
            "relay job {job_id} to {instance} is dead after attempt {attempt}: {error}",
            job_id=job.id, instance=target, attempt=job.attempt, error=outcome.error,
        )
        await self._finish(job, Completion(DEAD, error=outcome.error, duration=outcome.duration,
                                           relay_attempt=record))

    def _step_succeeded_may_route(self, job: ClaimedJob) -> bool:
        """
        Whether a relay step's C{ductile.step.succeeded} can route anywhere:
        a next step after the job's own, or a pipeline it triggers.  When it
        cannot (a pipeline whose last step is the relay — the common case),
        the event is not built nor routed: L{Router.route_next} would return
        nothing for it.
        """
        if not self._router.is_terminal(job.context):
            return True
        if self._step_succeeded_triggers is None:
            self._step_succeeded_triggers = any(
                self._router.pipeline(name).on == STEP_SUCCEEDED for name in self._router.pipeline_names()
            )
        return self._step_succeeded_triggers

    async def _finish(self, job: ClaimedJob, completion: Completion) -> None:
        """
        Commit the outcome.  While the database refuses writes the outcome is
        kept and the commit retried (the job stays "running" meanwhile), so a
        finished job is never lost or run again because the disk was full.
        """
        completion = with_hooks(job, completion, self._config, self._router, self._clock.seconds())
        delay = 1.0
        while True:
            try:
                await self._queue.complete(job, completion)
                return
            except StorageUnavailable as e:
                self.log.warn(
                    "cannot record the end of job {job_id} ({plugin}): {error}; retrying in {delay:.0f}s",
                    job_id=job.id, plugin=job.plugin, error=str(e), delay=delay,
                )
                await task.deferLater(self._clock, delay, lambda: None)
                delay = min(delay * 2, 30.0)
