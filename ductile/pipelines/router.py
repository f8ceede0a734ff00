"""
Route events through compiled pipelines (contract §3.4) — pure: no I/O, no
reactor.  The caller persists each L{Dispatch} as a job and calls back with
the events a finished job emitted.

Choices where Go is silent or odd (documented for the lead):

  - A new root started by an event a step emitted inherits the source job's
    baggage (the non-internal context keys): Go parents such root dispatches
    on the source job's context row, so the baggage is visible to them.
  - A new root started from inside a pipeline continues the source's route
    depth (C{source + 1}) and gets its own depth budget on top of that
    (C{source depth + pipeline max_depth}).  Chains of pipelines triggering
    pipelines are cut once the source depth reaches C{root_chain_limit}
    (default 64), which stops a pipeline whose step re-emits its own
    trigger from looping forever.
  - A false step C{if} is evaluated here and bypasses the step (Go runs an
    internal C{core.switch} job for it); no job is created for the check.
"""
from __future__ import annotations

from ductile.jsoncopy import copy_json
from typing import Any, Mapping, Sequence

import attrs
from twisted.logger import Logger

from ductile.events import Event, new_id
from ductile.pipelines import context as ctxmod
from ductile.pipelines.compiler import HANDLE, RELAY_PLUGIN, Node, Pipeline, Pipelines
from ductile.pipelines.context import apply_claims, baggage_of, project
from ductile.pipelines.expressions import ExpressionError, Scope, evaluate, remap

log = Logger()

#: Default bound on pipelines triggering pipelines (see module docstring).
ROOT_CHAIN_LIMIT = 64


class UnknownPipeline(KeyError):
    """C{route_pipeline} was asked for a pipeline that does not exist."""

    def __str__(self) -> str:
        return f"unknown pipeline {self.args[0]!r}"


@attrs.frozen
class RelayDispatch:
    """The resolved parameters of a C{relay:} step for the relay sender."""

    to: str
    event_type: str
    payload: Mapping[str, Any]
    dedupe_key: str | None
    baggage: Mapping[str, Any]


@attrs.frozen
class Dispatch:
    """
    One job to enqueue.  When C{error} is set the job must be recorded as
    FAILED with that message (a bad path in C{with}/baggage/relay fails the
    job rather than the routing).
    """

    pipeline: str
    step_id: str
    plugin: str
    command: str
    event: Event
    context: Mapping[str, Any]
    relay: RelayDispatch | None = None
    dedupe_key: str | None = None
    error: str | None = None

    @property
    def instance_id(self) -> str:
        return self.context[ctxmod.INSTANCE_ID]

    @property
    def route_depth(self) -> int:
        return self.context[ctxmod.ROUTE_DEPTH]


@attrs.frozen
class _Hop:
    """Where a dispatch is going: shared by every node expanded from it."""

    pipeline: Pipeline
    instance: str
    depth: int
    max_depth: int
    base: Mapping[str, Any]


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class Router:
    """Resolve dispatches for root events and for step completions."""

    def __init__(
        self,
        pipelines: Pipelines,
        plugin_configs: Mapping[str, Mapping[str, Any]] | None = None,
        root_chain_limit: int = ROOT_CHAIN_LIMIT,
    ) -> None:
        self._p = pipelines
        self._configs = plugin_configs or {}
        self._root_chain_limit = root_chain_limit

    # -- queries -----------------------------------------------------------

    def pipeline_names(self) -> list[str]:
        return self._p.names()

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self._p.by_name[name]
        except KeyError:
            raise UnknownPipeline(name) from None

    def is_terminal(self, context: Mapping[str, Any]) -> bool:
        """
        True when the step a job ran (named by its context) has nothing after
        it: the job's completion ends its branch of the pipeline instance.
        """
        pipeline = self._p.by_name.get(context.get(ctxmod.PIPELINE, ""))
        node = pipeline.nodes.get(context.get(ctxmod.STEP_ID, "")) if pipeline else None
        return node is None or not node.next

    # -- routing -----------------------------------------------------------

    def route_root(
        self,
        event: Event,
        baggage: Mapping[str, Any] | None = None,
        source_plugin: str | None = None,
        *,
        source_depth: int = 0,
        source_context: Mapping[str, Any] | None = None,
    ) -> list[Dispatch]:
        """
        Start every pipeline whose C{on} is exactly C{event.type}.

        A trigger C{if} sees the payload and C{source_context} (the emitting
        job's context; empty for root ingress, as in Go where relay and API
        roots evaluate trigger predicates with a nil context).
        """
        out: list[Dispatch] = []
        for name in self._p.by_trigger.get(event.type.strip(), ()):
            pipeline = self._p.by_name[name]
            if pipeline.from_plugin and pipeline.from_plugin != (source_plugin or "").strip():
                continue
            if pipeline.condition is not None:
                scope = Scope(payload=event.payload, context=dict(source_context or {}))
                if not pipeline.condition.evaluate(scope):
                    log.debug("pipeline {pipeline} trigger if is false", pipeline=name)
                    continue
            out += self._start(pipeline, event, baggage or {}, source_depth)
        return _dedupe(out)

    def route_pipeline(self, name: str, event: Event, baggage: Mapping[str, Any] | None = None) -> list[Dispatch]:
        """Entry dispatches for an explicit C{POST /pipeline/{name}} (no trigger checks)."""
        return _dedupe(self._start(self.pipeline(name), event, baggage or {}, 0))

    def route_hook(
        self, event: Event, source_plugin: str, baggage: Mapping[str, Any] | None = None
    ) -> list[Dispatch]:
        """
        Start every pipeline whose C{on-hook} is C{event.type} (a lifecycle
        signal such as C{job.failed}) for a finished root job of
        C{source_plugin}.  Only C{on-hook} pipelines are considered; their
        C{from_plugin} must match the job's plugin and their trigger C{if}
        sees the hook payload with an empty context (as in Go's NextHook).
        Each starts a fresh instance at depth 0, so a hook pipeline runs all
        of its steps; C{baggage} seeds its context.
        """
        out: list[Dispatch] = []
        signal = event.type.strip()
        for pipeline in self._p.by_name.values():
            if pipeline.on_hook != signal:
                continue
            if pipeline.from_plugin and pipeline.from_plugin != (source_plugin or "").strip():
                continue
            if pipeline.condition is not None:
                if not pipeline.condition.evaluate(Scope(payload=event.payload, context={})):
                    log.debug("hook pipeline {pipeline} trigger if is false", pipeline=pipeline.name)
                    continue
            out += self._start(pipeline, event, baggage or {}, 0)
        return _dedupe(out)

    def route_next(self, event: Event, source_context: Mapping[str, Any], source_plugin: str) -> list[Dispatch]:
        """
        Continue the source job's pipeline instance with C{event} (an event
        the step emitted, or the synthetic C{ductile.step.succeeded}) and
        start any pipelines C{event.type} triggers.
        """
        out: list[Dispatch] = []
        depth = _int(source_context.get(ctxmod.ROUTE_DEPTH))
        pipeline = self._p.by_name.get(source_context.get(ctxmod.PIPELINE) or "")
        node = pipeline.nodes.get(source_context.get(ctxmod.STEP_ID) or "") if pipeline else None
        instance = source_context.get(ctxmod.INSTANCE_ID)
        if pipeline is not None and node is not None and instance and node.next:
            max_depth = _int(source_context.get(ctxmod.ROUTE_MAX_DEPTH)) or pipeline.max_depth
            if max_depth > 0 and depth >= max_depth:
                log.warn(
                    "depth guard refused transition from {pipeline}/{step} at depth {depth} (max {max_depth})",
                    pipeline=pipeline.name, step=node.id, depth=depth, max_depth=max_depth,
                )
            else:
                base = {k: v for k, v in source_context.items() if k != ctxmod.PLUGIN}
                hop = _Hop(pipeline, instance, depth + 1, max_depth, base)
                out += self._expand(hop, node.next, event, set())
        if depth >= self._root_chain_limit:
            if self._p.by_trigger.get(event.type.strip()):
                log.warn("root chain limit {limit} refused {type}", limit=self._root_chain_limit, type=event.type)
        else:
            out += self.route_root(
                event, baggage_of(source_context), source_plugin,
                source_depth=depth, source_context=source_context,
            )
        return _dedupe(out)

    # -- internals ---------------------------------------------------------

    def _start(self, pipeline: Pipeline, event: Event, baggage: Mapping[str, Any], source_depth: int) -> list[Dispatch]:
        instance = new_id()
        max_depth = source_depth + pipeline.max_depth if pipeline.max_depth else 0
        base = {k: copy_json(v) for k, v in baggage.items() if k not in ctxmod.INTERNAL_KEYS}
        base.update({
            ctxmod.PIPELINE: pipeline.name,
            ctxmod.INSTANCE_ID: instance,
            ctxmod.ROUTE_DEPTH: source_depth,
            ctxmod.ROUTE_MAX_DEPTH: max_depth,
        })
        hop = _Hop(pipeline, instance, source_depth + 1, max_depth, base)
        return self._expand(hop, pipeline.entry, event, set())

    def _expand(self, hop: _Hop, ids: Sequence[str], event: Event, seen: set[str]) -> list[Dispatch]:
        """Concrete dispatches for C{ids}, resolving gates and false C{if}s."""
        out: list[Dispatch] = []
        for ident in ids:
            if ident in seen:
                continue
            seen.add(ident)
            node = hop.pipeline.nodes[ident]
            if node.condition is not None:
                config = self._configs.get(node.plugin or "", {})
                scope = Scope(payload=event.payload, context=hop.base, config=config)
                if not node.condition.evaluate(scope):
                    out += self._expand(hop, node.next, event, seen)
                    continue
            if node.kind == "gate":
                out += self._expand(hop, node.inner, event, seen)
                continue
            out.append(self._dispatch(hop, node, event))
        return out

    def _dispatch(self, hop: _Hop, node: Node, event: Event) -> Dispatch:
        internal = {
            ctxmod.PIPELINE: hop.pipeline.name,
            ctxmod.STEP_ID: node.id,
            ctxmod.INSTANCE_ID: hop.instance,
            ctxmod.ROUTE_DEPTH: hop.depth,
            ctxmod.ROUTE_MAX_DEPTH: hop.max_depth,
        }
        inherited = {k: v for k, v in hop.base.items() if k not in ctxmod.INTERNAL_KEYS}
        fields = dict(pipeline=hop.pipeline.name, step_id=node.id, command=HANDLE, dedupe_key=event.dedupe_key)
        if node.kind == "relay":
            context: dict[str, Any] = {**copy_json(inherited), **internal}
            return self._relay_dispatch(node, event, context, inherited, fields)
        assert node.plugin is not None
        error = None
        payload: dict[str, Any] = dict(event.payload)
        context = {**copy_json(inherited), **internal}
        try:
            claimed = apply_claims(inherited, node.baggage, Scope(payload=event.payload, context=inherited))
            context = {**claimed, **internal}
            merged = {**{k: copy_json(v) for k, v in context.items()}, **event.payload}
            payload = merged
            if node.with_:
                scope = Scope(payload=merged, context=claimed, config=self._configs.get(node.plugin, {}))
                payload = {**merged, **remap(node.with_, scope)}
        except ExpressionError as e:
            error = f'pipeline "{hop.pipeline.name}" step "{node.id}": {e}'
        return Dispatch(
            plugin=node.plugin, event=_with_payload(event, payload), context=context,
            error=error, **fields,
        )

    def _relay_dispatch(
        self, node: Node, event: Event, context: dict[str, Any],
        inherited: Mapping[str, Any], fields: dict[str, Any],
    ) -> Dispatch:
        spec = node.relay
        assert spec is not None
        scope = Scope(payload=event.payload, context=inherited)
        relay = None
        error = None
        try:
            payload = remap(spec.with_, scope, paths=True) if spec.with_ is not None else copy_json(dict(event.payload))
            if spec.dedupe_key is not None:
                key = evaluate(spec.dedupe_key, scope)
                dedupe = None if key is None else (key if isinstance(key, str) else str(key))
                dedupe = dedupe or None
            else:
                dedupe = event.dedupe_key
            baggage = project(spec.baggage, scope, "relay.baggage") if spec.baggage else {}
            relay = RelayDispatch(to=spec.to, event_type=spec.event, payload=payload, dedupe_key=dedupe, baggage=baggage)
        except ExpressionError as e:
            error = f'pipeline "{fields["pipeline"]}" step "{node.id}": relay: {e}'
        return Dispatch(plugin=RELAY_PLUGIN, event=event, context=context, relay=relay, error=error, **fields)


def _with_payload(event: Event, payload: dict[str, Any]) -> Event:
    # attrs.evolve, without its per-call introspection: one per routed step.
    return Event(type=event.type, payload=payload, source=event.source, timestamp=event.timestamp,
                 event_id=event.event_id, dedupe_key=event.dedupe_key)


def _dedupe(dispatches: list[Dispatch]) -> list[Dispatch]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for d in dispatches:
        key = (d.pipeline, d.step_id, d.instance_id, d.plugin, d.command)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


__all__ = ["Dispatch", "RelayDispatch", "Router", "UnknownPipeline"]
