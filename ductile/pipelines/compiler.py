"""
Compile raw C{pipelines:} entries into routing graphs (contract §3.1).

The compiled form is a small DAG per pipeline:

  - C{uses} and C{relay} steps become L{Node}s of kind C{uses} / C{relay};
  - nested C{steps} are a sequence, C{split} a parallel fan-out whose every
    branch end continues to the following step (there is no join: the
    following step runs once per finished branch, as in Go);
  - C{call: other} is inlined: the called pipeline's steps are compiled in
    place with ids prefixed C{<call-step-id>/}, so the called steps run inside
    the caller's pipeline instance and the caller continues after them;
  - an C{if} on a C{uses}/C{relay} step is kept on the node; an C{if} on a
    composite step (C{call}/C{steps}/C{split}) becomes a C{gate} node.  A
    false C{if} bypasses the step to whatever follows it.

Every problem is collected and reported together in one L{PipelineError}.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import attrs

from ductile.config.models import PipelineSource
from ductile.events import RELAY_EVENT_TYPE
from ductile.pipelines.context import BaggageSpec
from ductile.pipelines.expressions import check_expression, check_path
from ductile.pipelines.predicates import Predicate, compile_predicate

STEP_KINDS = ("uses", "call", "steps", "split", "relay")
HOOK_SIGNALS = ("job.completed", "job.failed", "job.timed_out")
RELAY_PLUGIN = "core.relay"
HANDLE = "handle"
_BAGGAGE_SEGMENT_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789")


class PipelineError(ValueError):
    """Pipelines failed to compile; C{problems} lists every message."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@attrs.frozen
class RelaySpec:
    to: str
    event: str
    dedupe_key: str | None = None
    with_: Mapping[str, Any] | None = None
    baggage: BaggageSpec | None = None


@attrs.frozen
class Node:
    """
    One compiled step.  C{kind} is C{uses}, C{relay} or C{gate}.  C{next}
    are the node ids that follow it (and that a false C{condition} bypasses
    to); a gate's C{inner} are the entry ids of the step it guards.
    """

    id: str
    kind: str
    plugin: str | None = None
    with_: Mapping[str, Any] | None = None
    baggage: BaggageSpec | None = None
    relay: RelaySpec | None = None
    condition: Predicate | None = None
    next: tuple[str, ...] = ()
    inner: tuple[str, ...] = ()


@attrs.frozen
class Pipeline:
    name: str
    on: str | None
    on_hook: str | None
    from_plugin: str | None
    condition: Predicate | None
    entry: tuple[str, ...]
    nodes: Mapping[str, Node]
    max_depth: int
    execution_mode: str = "async"
    timeout: Any = None
    file: str = ""


@attrs.frozen
class Pipelines:
    """The compiled set; C{by_trigger} keeps definition order."""

    by_name: Mapping[str, Pipeline]
    by_trigger: Mapping[str, tuple[str, ...]]

    def names(self) -> list[str]:
        return sorted(self.by_name)


class _Builder:
    """Compiles one pipeline's steps (and inlined calls) into nodes."""

    def __init__(self, ctx: "_Compilation", file: str, pipeline: str) -> None:
        self.ctx = ctx
        self.file = file
        self.pipeline = pipeline
        self.nodes: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = {}
        #: >0 while inlining a called pipeline: its own compile reports its
        #: problems, so they are not repeated under every caller.
        self.quiet = 0

    def error(self, label: str | None, msg: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        where = f'{self.file}: pipeline "{self.pipeline}"'
        if label:
            where += f' step "{label}"'
        self.ctx.errors.append(f"{where}: {msg}")

    def alloc(self, preferred: Any, prefix: str, label: str) -> str:
        if isinstance(preferred, str) and preferred.strip():
            ident = prefix + preferred.strip()
        else:
            n = self.counters.get(prefix, 0)
            while True:
                n += 1
                ident = f"{prefix}step_{n}"
                if ident not in self.nodes:
                    break
            self.counters[prefix] = n
        if ident in self.nodes:
            self.error(label, f'duplicate step id "{ident}"')
            n = 1
            while f"{ident}~{n}" in self.nodes:
                n += 1
            ident = f"{ident}~{n}"
        self.nodes[ident] = {}
        return ident

    def link(self, exits: list[str], targets: list[str]) -> None:
        for node_id in exits:
            nxt = self.nodes[node_id].setdefault("next", [])
            for t in targets:
                if t not in nxt:
                    nxt.append(t)

    def steps(self, steps: Any, path: str, prefix: str, stack: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if not isinstance(steps, list) or not steps:
            self.error(None, f"{path or 'steps'} must be a non-empty list")
            return [], []
        entry: list[str] = []
        previous: list[str] = []
        for i, step in enumerate(steps):
            step_entry, step_exit = self.step(step, f"{path}steps[{i}]", prefix, stack)
            if i == 0:
                entry = step_entry
            if previous and step_entry:
                self.link(previous, step_entry)
            if step_exit:
                previous = step_exit
        return entry, previous

    def step(self, step: Any, path: str, prefix: str, stack: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if not isinstance(step, Mapping):
            self.error(path, f"step must be a mapping, got {type(step).__name__}")
            return [], []
        label = prefix + str(step["id"]).strip() if isinstance(step.get("id"), str) and step["id"].strip() else path
        present = [k for k in STEP_KINDS if step.get(k) not in (None, "", [], {})]
        if len(present) != 1:
            found = ", ".join(present) if present else "none"
            self.error(label, f"step must define exactly one of uses, call, steps, split, relay (found: {found})")
            return [], []
        kind = present[0]
        if kind != "uses":
            for key in ("with", "baggage"):
                if step.get(key):
                    self.error(label, f"{key} is only supported on uses steps")
        cond = None
        if step.get("if") is not None:
            cond, problems = compile_predicate(step["if"], where="if")
            for p in problems:
                self.error(label, p)

        if kind in ("uses", "relay"):
            ident = self.alloc(step.get("id"), prefix, label)
            record = self.nodes[ident]
            record.update(kind=kind, condition=cond)
            if kind == "uses":
                self.compile_uses(step, label, record)
            else:
                record["plugin"] = RELAY_PLUGIN
                record["relay"] = self.compile_relay(step["relay"], label)
            return [ident], [ident]

        gate = None
        if step.get("if") is not None or kind == "call":
            gate = self.alloc(step.get("id"), prefix, label)
            if step.get("if") is not None:
                self.nodes[gate].update(kind="gate", condition=cond)
        if kind == "steps":
            entry, exits = self.steps(step["steps"], f"{path}.", prefix, stack)
        elif kind == "split":
            entry, exits = self.split(step["split"], path, label, prefix, stack)
        else:
            assert gate is not None
            entry, exits = self.call(step, label, gate + "/", stack)
        if gate is not None and step.get("if") is None:
            return entry, exits
        if gate is None:
            return entry, exits
        self.nodes[gate]["inner"] = entry
        return [gate], exits + [gate]

    def split(self, branches: Any, path: str, label: str, prefix: str, stack: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if not isinstance(branches, list) or not branches:
            self.error(label, "split must be a non-empty list")
            return [], []
        entry: list[str] = []
        exits: list[str] = []
        for i, branch in enumerate(branches):
            b_entry, b_exit = self.step(branch, f"{path}.split[{i}]", prefix, stack)
            entry += [e for e in b_entry if e not in entry]
            exits += [e for e in b_exit if e not in exits]
        return entry, exits

    def call(self, step: Mapping[str, Any], label: str, prefix: str, stack: tuple[str, ...]) -> tuple[list[str], list[str]]:
        target = step["call"]
        if not isinstance(target, str):
            self.error(label, f"call must be a pipeline name, got {target!r}")
            return [], []
        target = target.strip()
        if target in stack:
            cycle = " -> ".join(stack[stack.index(target):] + (target,))
            self.error(label, f"pipeline call cycle: {cycle}", always=True)
            return [], []
        source = self.ctx.sources.get(target)
        if source is None:
            self.error(label, f'call to unknown pipeline "{target}"')
            return [], []
        self.quiet += 1
        try:
            return self.steps(source.spec.get("steps"), "", prefix, stack + (target,))
        finally:
            self.quiet -= 1

    def compile_uses(self, step: Mapping[str, Any], label: str, record: dict[str, Any]) -> None:
        plugin = step["uses"]
        if not isinstance(plugin, str):
            self.error(label, f"uses must be a plugin name, got {plugin!r}")
            return
        plugin = plugin.strip()
        if plugin not in self.ctx.plugin_names:
            self.error(label, f'unknown plugin "{plugin}"')
        record["plugin"] = plugin
        with_ = step.get("with")
        if with_ is not None:
            if not isinstance(with_, Mapping):
                self.error(label, "with must be a mapping")
            else:
                for key, expr in with_.items():
                    problem = check_expression(expr)
                    if problem:
                        self.error(label, f"with.{key}: {problem}")
                record["with_"] = dict(with_)
        if step.get("baggage") is not None:
            record["baggage"] = self.compile_baggage(step["baggage"], label, "baggage")

    def compile_baggage(self, spec: Any, label: str, where: str) -> BaggageSpec | None:
        if not isinstance(spec, Mapping):
            self.error(label, f"{where} must be a mapping")
            return None
        before = len(self.ctx.errors)
        bulk_from = spec.get("from")
        namespace = spec.get("namespace")
        mappings: dict[str, str] = {}
        for dest, expr in spec.items():
            if dest in ("from", "namespace"):
                continue
            problem = _check_baggage_path(dest)
            if problem:
                self.error(label, f"{where}: invalid baggage key {dest!r}: {problem}")
            problem = check_expression(expr, literals=False)
            if problem:
                self.error(label, f"{where}.{dest}: {problem}")
            mappings[str(dest)] = expr
        if bulk_from is not None:
            if not isinstance(bulk_from, str) or check_path(bulk_from, ("payload",)):
                self.error(label, f"{where}.from {bulk_from!r} must reference payload or payload.<path>")
            if not isinstance(namespace, str) or not namespace.strip():
                self.error(label, f"{where}.from needs a namespace")
            elif _check_baggage_path(namespace):
                self.error(label, f"{where}: invalid namespace {namespace!r}: {_check_baggage_path(namespace)}")
        elif namespace is not None:
            self.error(label, f"{where}.namespace is only valid with from")
        if len(self.ctx.errors) != before:
            return None
        return BaggageSpec(
            mappings=mappings,
            bulk_from=bulk_from.strip() if isinstance(bulk_from, str) else None,
            namespace=namespace.strip() if isinstance(namespace, str) else None,
        )

    def compile_relay(self, spec: Any, label: str) -> RelaySpec | None:
        if not isinstance(spec, Mapping):
            self.error(label, "relay must be a mapping with to and event")
            return None
        before = len(self.ctx.errors)
        to = spec.get("to")
        event = spec.get("event")
        if not isinstance(to, str) or not to.strip():
            self.error(label, "relay.to is required")
        elif self.ctx.instance_names and to.strip() not in self.ctx.instance_names:
            self.error(label, f'relay to unknown instance "{to.strip()}"')
        if not isinstance(event, str) or not event.strip():
            self.error(label, "relay.event is required")
        elif not RELAY_EVENT_TYPE.match(event.strip()):
            self.error(label, f"relay.event {event!r} is not a valid relay event type "
                              "(lower-case dotted or hyphenated, no underscores)")
        dedupe = spec.get("dedupe_key")
        if dedupe is not None:
            problem = check_expression(dedupe, literals=False)
            if problem:
                self.error(label, f"relay.dedupe_key: {problem}")
        with_ = spec.get("with")
        if with_ is not None:
            if not isinstance(with_, Mapping):
                self.error(label, "relay.with must be a mapping")
            else:
                for key, expr in with_.items():
                    if not str(key).strip():
                        self.error(label, "relay.with keys must be non-empty")
                    problem = check_expression(expr, literals=False)
                    if problem:
                        self.error(label, f"relay.with.{key}: {problem}")
        baggage = None
        if spec.get("baggage") is not None:
            baggage = self.compile_baggage(spec["baggage"], label, "relay.baggage")
        extra = set(spec) - {"to", "event", "dedupe_key", "with", "baggage"}
        if extra:
            self.error(label, f"relay: unknown keys {sorted(extra)}")
        if len(self.ctx.errors) != before:
            return None
        return RelaySpec(
            to=to.strip(), event=event.strip(), dedupe_key=dedupe,
            with_=dict(with_) if with_ is not None else None, baggage=baggage,
        )

    def build(self) -> dict[str, Node]:
        out = {}
        for ident, rec in self.nodes.items():
            if "kind" not in rec:
                continue
            out[ident] = Node(
                id=ident, kind=rec["kind"], plugin=rec.get("plugin"), with_=rec.get("with_"),
                baggage=rec.get("baggage"), relay=rec.get("relay"), condition=rec.get("condition"),
                next=tuple(rec.get("next", ())), inner=tuple(rec.get("inner", ())),
            )
        return out


def _check_baggage_path(path: Any) -> str | None:
    if not isinstance(path, str) or not path.strip():
        return "path must be non-empty"
    for part in path.strip().split("."):
        if not part:
            return "path segments must be non-empty"
        if part[0].isdigit() or not set(part) <= _BAGGAGE_SEGMENT_OK:
            return f"segment {part!r} must use letters, digits or underscore and not start with a digit"
    return None


@attrs.define
class _Compilation:
    sources: dict[str, PipelineSource]
    plugin_names: frozenset[str]
    instance_names: frozenset[str]
    errors: list[str] = attrs.field(factory=list)


def _longest(nodes: Mapping[str, Node], ids: Sequence[str], memo: dict[str, int]) -> int:
    best = 0
    for ident in ids:
        if ident not in memo:
            node = nodes[ident]
            own = 0 if node.kind == "gate" else 1
            memo[ident] = own + max(_longest(nodes, node.next, memo), _longest(nodes, node.inner, memo))
        best = max(best, memo[ident])
    return best


def compile_pipelines(
    sources: Sequence[PipelineSource],
    plugin_names: Collection[str],
    instance_names: Collection[str] = (),
) -> Pipelines:
    """
    Compile every pipeline or raise L{PipelineError} listing all problems.

    C{instance_names}, when non-empty, are the configured relay instances a
    C{relay:} step may target.
    """
    ctx = _Compilation(sources={}, plugin_names=frozenset(plugin_names), instance_names=frozenset(instance_names))
    named: list[tuple[str, PipelineSource]] = []
    for source in sources:
        spec = source.spec
        if not isinstance(spec, Mapping):
            ctx.errors.append(f"{source.file}: pipelines[{source.index}]: must be a mapping")
            continue
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            ctx.errors.append(f"{source.file}: pipelines[{source.index}]: name is required")
            continue
        name = name.strip()
        if name in ctx.sources:
            other = ctx.sources[name]
            ctx.errors.append(
                f'{source.file}: pipeline "{name}": duplicate pipeline name '
                f"(first defined in {other.file} pipelines[{other.index}])"
            )
            continue
        ctx.sources[name] = source
        named.append((name, source))

    compiled: dict[str, Pipeline] = {}
    for name, source in named:
        pipeline = _compile_one(ctx, name, source)
        if pipeline is not None:
            compiled[name] = pipeline
    if ctx.errors:
        raise PipelineError(ctx.errors)
    by_trigger: dict[str, list[str]] = {}
    for name, _ in named:
        on = compiled[name].on
        if on:
            by_trigger.setdefault(on, []).append(name)
    return Pipelines(by_name=compiled, by_trigger={k: tuple(v) for k, v in by_trigger.items()})


def _compile_one(ctx: _Compilation, name: str, source: PipelineSource) -> Pipeline | None:
    spec = source.spec
    b = _Builder(ctx, source.file, name)
    # YAML 1.1 (PyYAML) reads a bare ``on:`` key as the boolean True.
    on = spec.get("on", spec.get(True))
    on_hook = spec.get("on-hook", spec.get("on_hook"))
    on = on.strip() if isinstance(on, str) and on.strip() else None
    on_hook = on_hook.strip() if isinstance(on_hook, str) and on_hook.strip() else None
    if on is None and on_hook is None:
        b.error(None, "on (or on-hook) is required")
    elif on is not None and on_hook is not None:
        b.error(None, "on and on-hook are mutually exclusive")
    elif on_hook is not None and on_hook not in HOOK_SIGNALS:
        b.error(None, f"on-hook {on_hook!r} must be one of {', '.join(HOOK_SIGNALS)}")
    from_plugin = spec.get("from_plugin")
    if from_plugin is not None:
        if not isinstance(from_plugin, str) or not from_plugin.strip():
            b.error(None, "from_plugin must be a plugin name")
            from_plugin = None
        else:
            from_plugin = from_plugin.strip()
            if from_plugin not in ctx.plugin_names:
                b.error(None, f'from_plugin names unknown plugin "{from_plugin}"')
    condition = None
    if spec.get("if") is not None:
        condition, problems = compile_predicate(spec["if"], roots=("payload", "context"), where="if")
        for p in problems:
            b.error(None, p)
    author_max = spec.get("max_depth")
    if author_max is not None and (isinstance(author_max, bool) or not isinstance(author_max, int) or author_max < 0):
        b.error(None, f"max_depth must be an integer >= 0 (0 means unlimited), got {author_max!r}")
        author_max = None
    mode = spec.get("execution_mode", "async") or "async"
    if mode not in ("async", "synchronous"):
        b.error(None, f"execution_mode must be async or synchronous, got {mode!r}")
    entry, _ = b.steps(spec.get("steps"), "", "", (name,))
    nodes = b.build()
    if not nodes:
        return None
    auto = max(1, _longest(nodes, entry, {}))
    return Pipeline(
        name=name, on=on, on_hook=on_hook, from_plugin=from_plugin, condition=condition,
        entry=tuple(entry), nodes=nodes, max_depth=author_max if author_max is not None else auto,
        execution_mode=mode, timeout=spec.get("timeout"), file=source.file,
    )
