"""
The running instance as a Twisted service: database, queue, dispatcher,
plugin runner, relay sender, scheduler and the HTTP site (API + relay
ingress), started and stopped in the order that loses nothing.

Start: migrate, recover jobs left running by a crash, then listen and
dispatch.  Reload (SIGHUP, C{POST /system/reload}): the config is loaded
and checked again and swapped in without dropping the queue or running jobs
(L{ductile.reload}).  Stop: stop listening (no new acceptances), stop starting jobs and
let running plugins finish within their grace, close the relay client, then
close the database.
"""
from __future__ import annotations

import os
import signal
import sys
import weakref
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from ductile.dispatch import Dispatcher
from ductile.endpoints import go_style_to_endpoint
from ductile.executor import RELAY_PLUGIN, JobExecutor
from ductile.instance import Instance
from ductile.metrics import Metrics
from ductile.queue import JobQueue
from ductile.reload import REMOVED_PLUGIN_REASON, Reloader, ReloadPlan
from ductile.store.lock import StateLock
from ductile.store.pool import open_pool, prepare_database
from ductile.store.writer import GroupCommitWriter
from ductile.web.api import Api

#: Seconds between retention prunes of the state database.
PRUNE_INTERVAL = 3600.0
#: Seconds a graceful stop lets running jobs finish before it stops their
#: plugins (which then run again after restart, as the same attempt).  Keep
#: it under the supervisor's stop timeout (30 s in etc/systemd).
SHUTDOWN_GRACE = 20.0


class DuctileService(service.Service):
    log = Logger()

    def __init__(
        self, instance: Instance, reactor: Any, lock: StateLock | None = None, exit_on_start_failure: bool = False
    ) -> None:
        """
        @param exit_on_start_failure: stop the process with exit status 1 if
            starting fails (what twistd wants; tests keep their reactor).
        """
        self.exit_on_start_failure = exit_on_start_failure
        self.instance = instance
        self.lock = lock if lock is not None else StateLock(instance.config.state.path)
        self.config = instance.config
        self.reactor = reactor
        self.port: Any = None
        self.metrics_port: Any = None
        self.pool: Any = None
        self.queue: JobQueue | None = None
        self.dispatcher: Dispatcher | None = None
        self.executor: JobExecutor | None = None
        #: Every executor a reload replaced while its jobs may still run: a
        #: shutdown that cuts them short must tell each of them.
        self._executors: weakref.WeakSet[JobExecutor] = weakref.WeakSet()
        self._caps: dict[str, int] = {}
        self.ingress_resource: Any = None
        self.runner: Any = None
        self.sender: Any = None
        self.scheduler: Any = None
        self.site: Any = None
        self.api: Api | None = None
        self.ingress_stats: Any = None
        self.metrics = Metrics()
        self.manhole: Any = None
        self._pruner: Any = None
        if self.config.manhole is not None:
            from ductile.admin import admin_namespace, build_manhole_service

            # Built now so a bad admin.manhole refuses the start before anything
            # opens; the namespace is read per session, once the queue exists.
            self.manhole = build_manhole_service(reactor, self.config.manhole, lambda: admin_namespace(self))
        self.started = defer.Deferred()
        self.reloader = Reloader(
            reactor, lambda: self.instance, self.swap_instance,
            running=lambda: self.running and self.started.called and self.queue is not None,
        )

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        self.log.failure("ductile failed to start", failure)
        if not self.started.called:
            self.started.errback(failure)
        if self.exit_on_start_failure and self.reactor.running:
            # twistd would exit 0 after a plain reactor.stop(); a supervisor
            # (systemd Restart=on-failure) must see the failure.
            def exit_1() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)

            self.reactor.addSystemEventTrigger("after", "shutdown", exit_1)
            self.reactor.stop()

    async def _start(self) -> None:
        from ductile.hooks import RecoveryHooks
        from ductile.plugins.runner import ProcessRunner, minimal_env
        from ductile.relay.acceptor import RelayAcceptor
        from ductile.relay.ingress import ingress_body_limit_for, mount_remote_ingress
        from ductile.relay.sender import RelaySender
        from ductile.relay.stats import IngressStats
        from ductile.web.limits import DuctileSite

        cfg = self.config
        for problem in self.instance.plugin_problems:
            self.log.warn("plugin not loaded: {problem}", problem=problem)
        for warning in cfg.warnings:
            self.log.warn("config: {config_warning}", config_warning=warning)

        self.lock.acquire()
        prepare_database(cfg.state.path, cfg.state.synchronous)
        self.pool = open_pool(cfg.state.path, cfg.state.synchronous)
        writer = GroupCommitWriter(self.pool, self.reactor)
        self.queue = JobQueue(self.pool, writer, self.reactor, dedupe_ttl=cfg.service.dedupe_ttl)
        # A job recovery makes dead fires its job.failed hooks in the same transaction.
        for job_id, plugin, status in await self.queue.recover(hooks=RecoveryHooks(cfg, self.instance.router)):
            self.log.warn("crash recovery: job {job_id} ({plugin}) -> {status}", job_id=job_id, plugin=plugin,
                          status=status)

        self.runner = ProcessRunner(self.reactor,
                                    base_env=minimal_env(passthrough=cfg.service.plugin_env_passthrough))
        if any(i.enabled for i in cfg.instances):
            self.sender = RelaySender(self.reactor, cfg.service.name, [i for i in cfg.instances if i.enabled],
                                      max_persistent=max(4, cfg.service.max_workers))
        self.executor = self._new_executor()
        # The caps change only with a reload, so they are worked out then,
        # not on every claim.
        self._caps = self._plugin_caps()
        self.dispatcher = Dispatcher(self.reactor, self.queue, self._execute, cfg.service.max_workers,
                                     lambda: self._caps)

        ingress = cfg.remote_ingress
        self.ingress_stats = IngressStats()
        self.api = Api(self.reactor, cfg, self.queue, self.instance.plugins, self.instance.router,
                       metrics=self.metrics, ingress_stats=self.ingress_stats if ingress is not None else None,
                       reloader=self.reload)
        root = self.api.resource()
        if ingress is not None:
            acceptor = RelayAcceptor(cfg, self.instance.router, self.queue)
            self.ingress_resource = mount_remote_ingress(root, ingress, acceptor, self.reactor, self.ingress_stats)
        self.site = DuctileSite(
            root,
            body_limit_for=ingress_body_limit_for(ingress, cfg.api.max_body_size, self.ingress_stats),
            reactor=self.reactor,
            read_deadline=cfg.api.read_timeout,
            max_connections=cfg.api.max_connections,
        )
        if cfg.api.enabled or ingress is not None:
            desc = go_style_to_endpoint(cfg.api.listen)
            self.port = await endpoints.serverFromString(self.reactor, desc).listen(self.site)
            self.log.info("{service} listening on {listen}", service=cfg.service.name, listen=cfg.api.listen)

        if cfg.metrics is not None:
            metrics_site = DuctileSite(self.api.metrics_resource(), body_limit_for=lambda path: 0,
                                       reactor=self.reactor, read_deadline=cfg.api.read_timeout)
            self.metrics_port = await endpoints.serverFromString(
                self.reactor, go_style_to_endpoint(cfg.metrics.listen)
            ).listen(metrics_site)
            self.log.info("metrics (no token) on {listen}", listen=cfg.metrics.listen)

        self.dispatcher.start()
        self._start_scheduler()
        self._pruner = task.LoopingCall(self._prune)
        self._pruner.clock = self.reactor
        self._pruner.start(PRUNE_INTERVAL, now=True).addErrback(
            lambda f: self.log.failure("retention pruning stopped", f)
        )
        if self.manhole is not None:
            self.manhole.startService()
            await self.manhole.whenListening()
            self.log.info("admin manhole listening on {listen}", listen=self.config.manhole.listen)
        self.log.info(
            "{service} started: {plugins} plugins, {peers} relay peers, {instances} relay instances",
            service=cfg.service.name, plugins=len(self.instance.plugins),
            peers=len(ingress.peers) if ingress else 0, instances=len(cfg.instances),
        )
        self.started.callback(self)

    def _start_scheduler(self) -> None:
        from ductile.scheduler import Scheduler, ScheduleStore

        assert self.queue is not None
        self.scheduler = Scheduler(self.reactor, self.queue, self.config, self.instance.plugins,
                                   store=ScheduleStore(self.pool, self.reactor))
        self.scheduler.start()

    def _new_executor(self) -> JobExecutor:
        assert self.queue is not None
        executor = JobExecutor(self.reactor, self.queue, self.config, self.instance.plugins, self.runner,
                               self.instance.router, self.sender, metrics=self.metrics)
        self._executors.add(executor)
        return executor

    def _execute(self, job: Any) -> Any:
        # Looked up per job: a job claimed after a reload runs under the new
        # config; one already running keeps the executor it started with.
        assert self.executor is not None
        return self.executor(job)

    # -- reload -------------------------------------------------------------

    def reload(self) -> defer.Deferred[dict[str, Any]]:
        """
        Load the config file again and put it in service without a restart
        (see L{ductile.reload}).  Fires with the report; fails with
        L{ductile.reload.ReloadError} (old config still running) when the new
        one does not load or check.
        """
        return self.reloader.reload()

    def swap_instance(self, instance: Instance, plan: ReloadPlan) -> defer.Deferred[list[str]]:
        """
        Put a checked instance in service, all at once: every new part is
        built first, then plain assignments switch them in with no Deferred
        awaited in between, so nothing ever sees half of a reload.  Then the
        queued jobs of plugins it no longer loads are made dead (contract
        §4.2); fires with their ids.
        """
        from ductile.plugins.runner import minimal_env
        from ductile.relay.acceptor import RelayAcceptor
        from ductile.relay.sender import RelaySender
        from ductile.scheduler import Scheduler, ScheduleStore

        assert self.queue is not None and self.dispatcher is not None and self.api is not None
        old = self.instance
        cfg = instance.config
        # -- build (may fail: then nothing has changed) --
        enabled = [i for i in cfg.instances if i.enabled]
        sender = self.sender
        if sender is None and enabled:
            sender = RelaySender(self.reactor, cfg.service.name, enabled,
                                 max_persistent=max(4, cfg.service.max_workers))
        executor = JobExecutor(self.reactor, self.queue, cfg, instance.plugins, self.runner, instance.router,
                               sender, metrics=self.metrics)
        caps = self._plugin_caps(cfg, instance.plugins)
        acceptor = None
        if self.ingress_resource is not None and cfg.remote_ingress is not None:
            acceptor = RelayAcceptor(cfg, instance.router, self.queue)
        # Each schedule's next run lives in schedule_entries (as in Go), so
        # the new scheduler carries on where the old one stopped.
        scheduler = Scheduler(self.reactor, self.queue, cfg, instance.plugins,
                              store=ScheduleStore(self.pool, self.reactor))
        # -- switch --
        self.instance = instance
        self.config = cfg
        if sender is self.sender and sender is not None:
            sender.update_instances(enabled)
        self.sender = sender
        self.runner.set_base_env(minimal_env(passthrough=cfg.service.plugin_env_passthrough))
        self._executors.add(executor)
        self.executor = executor
        self.dispatcher.max_workers = max(1, cfg.service.max_workers)
        self._caps = caps
        self.queue.dedupe_ttl = cfg.service.dedupe_ttl
        self.api.reconfigure(cfg, instance.plugins, instance.router)
        if acceptor is not None:
            self.ingress_resource.reconfigure(cfg.remote_ingress, acceptor)
        stopping = self.scheduler.stop() if self.scheduler is not None else defer.succeed(None)
        self.scheduler = scheduler
        # Started once the old one's firings in flight have saved their state.
        armed = stopping.addBoth(lambda _: scheduler.start())
        # Submitted before the claim the kick starts, so the writer makes
        # the removed plugins' queued jobs dead before anything can claim them.
        gone = [name for name in old.plugins if name not in instance.plugins]
        # Jobs claimed ahead under the old config go back first (same batch,
        # in order), so the removed plugins' ones are made dead with the rest.
        self.dispatcher.release_claimed()
        killed = self.queue.kill_queued(gone, REMOVED_PLUGIN_REASON)
        self.dispatcher.kick()
        # The report comes once the new schedules are armed.
        return killed.addCallback(lambda ids: armed.addCallback(lambda _: ids))

    async def _prune(self) -> None:
        assert self.queue is not None
        svc = self.config.service
        try:
            counts = await self.queue.prune(svc.job_queue_retention, svc.job_log_retention)
        except Exception:
            self.log.failure("retention pruning failed; will try again")
            return
        if any(counts.values()):
            self.log.info("retention: pruned {counts}", counts=counts)

    def _plugin_caps(self, config: Any = None, plugins: Any = None) -> dict[str, int]:
        config = self.config if config is None else config
        plugins = self.instance.plugins if plugins is None else plugins
        caps = {}
        max_workers = config.service.max_workers
        for name, plugin in plugins.items():
            raw = config.plugin_config(name).parallelism
            if raw is None:
                cap = max_workers if plugin.concurrency_safe else 1
            else:
                cap = raw
            caps[name] = max(1, min(cap, max_workers))
        caps[RELAY_PLUGIN] = max_workers
        return caps

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        if self.manhole is not None and self.manhole.running:
            await self.manhole.stopService()
        if self.scheduler is not None:
            # A firing's enqueue in flight finishes before the pool closes.
            await self.scheduler.stop()
        if self.metrics_port is not None:
            await self.metrics_port.stopListening()
        if self.port is not None:
            await self.port.stopListening()
            await self.site.close_connections()
        if self.dispatcher is not None:
            draining = self.dispatcher.stop()
            grace = task.deferLater(self.reactor, SHUTDOWN_GRACE, lambda: None)
            await defer.DeferredList([draining, grace], fireOnOneCallback=True, consumeErrors=True)
            if not draining.called:
                self.log.warn(
                    "jobs still running after {grace:.0f}s; stopping their plugins (they run again after restart)",
                    grace=SHUTDOWN_GRACE,
                )
                for executor in list(self._executors):
                    executor.interrupting = True
                await self.runner.shutdown()
            grace.cancel()
            await draining
        if self.sender is not None:
            await self.sender.close()
        if self.pool is not None:
            self.pool.close()
        self.lock.release()
        self.log.info("{service} stopped", service=self.config.service.name)


def install_sighup(reactor: Any, ductile: DuctileService) -> None:
    """
    Reload C{ductile}'s config on SIGHUP (C{systemctl reload}).  Only for a
    real reactor in the main thread (twistd); the handler hands over to the
    reactor thread, where the reload runs.
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(_reload_on_signal, ductile)

    signal.signal(signal.SIGHUP, handler)


def _reload_on_signal(ductile: DuctileService) -> defer.Deferred[Any]:
    """What SIGHUP does: reload; a refusal is already logged by the reloader."""
    from ductile.reload import ReloadError

    ductile.log.info("SIGHUP received: reloading the config")
    d = ductile.reload()

    def failed(failure: Any) -> None:
        if not failure.check(ReloadError):
            ductile.log.failure("config reload failed", failure)

    return d.addErrback(failed)
