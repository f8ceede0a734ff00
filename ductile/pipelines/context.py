"""
Durable pipeline context: baggage and the internal C{ductile_*} keys
(contract §2.4, §3.3, §1.11).

Context is a nested JSON object.  Only keys claimed through a step's
C{baggage:} (or admitted root baggage) become durable; claims deep-accrete,
and an inherited value may be repeated but never changed.
"""
from __future__ import annotations

from ductile.jsoncopy import copy_json
from typing import Any, Mapping

import attrs

from ductile.pipelines.expressions import ExpressionError, Scope, evaluate, resolve_path

PIPELINE = "ductile_pipeline"
STEP_ID = "ductile_step_id"
INSTANCE_ID = "ductile_pipeline_instance_id"
ROUTE_DEPTH = "ductile_route_depth"
ROUTE_MAX_DEPTH = "ductile_route_max_depth"
PLUGIN = "ductile_plugin"

#: Keys the runtime owns; never baggage, never inherited by new roots.
INTERNAL_KEYS = frozenset({PIPELINE, STEP_ID, INSTANCE_ID, ROUTE_DEPTH, ROUTE_MAX_DEPTH, PLUGIN})


class BaggageError(ExpressionError):
    """A baggage claim could not be applied (missing path or changed value)."""


@attrs.frozen
class BaggageSpec:
    """
    A compiled C{baggage:} block: explicit C{{dest.path: expr}} claims and
    an optional bulk C{{from: payload.x, namespace: ns}} import.
    """

    mappings: Mapping[str, str] = attrs.field(factory=dict)
    bulk_from: str | None = None
    namespace: str | None = None


def baggage_of(context: Mapping[str, Any]) -> dict[str, Any]:
    """The non-internal (baggage) keys of a context, deep-copied."""
    return {k: copy_json(v) for k, v in context.items() if k not in INTERNAL_KEYS}


def _accrete(target: dict[str, Any], dest: str, value: Any, label: str) -> None:
    """Set C{dest} (dotted) in C{target}; an existing different value is an error."""
    parts = dest.split(".")
    node = target
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise BaggageError(
                f"{label}: cannot set {dest!r}: inherited {'.'.join(parts[: i + 1])!r} is not an object"
            )
        node = child
    last = parts[-1]
    if last in node:
        existing = node[last]
        if isinstance(existing, dict) and isinstance(value, Mapping):
            for key, sub in value.items():
                _accrete(existing, key, sub, label)
            return
        if existing != value or type(existing) is not type(value):
            raise BaggageError(
                f"{label}: baggage {dest!r} is already {existing!r} and cannot change to {value!r}"
            )
        return
    node[last] = copy_json(value)


def merge_baggage(context: Mapping[str, Any], baggage: Mapping[str, Any], label: str = "baggage") -> dict[str, Any]:
    """Deep-accrete C{baggage} onto a copy of C{context}."""
    out = copy_json(dict(context))
    for key, value in baggage.items():
        _accrete(out, key, value, label)
    return out


def project(spec: BaggageSpec, scope: Scope, label: str = "baggage") -> dict[str, Any]:
    """
    Evaluate a baggage block into a fresh nested mapping (used for claims and
    for the C{relay:} step's explicit baggage projection).
    """
    out: dict[str, Any] = {}
    for dest, expr in spec.mappings.items():
        try:
            value = evaluate(expr, scope)
        except ExpressionError as e:
            raise BaggageError(f"{label}.{dest}: {e}") from None
        _accrete(out, dest, value, label)
    if spec.bulk_from is not None:
        try:
            value = resolve_path(spec.bulk_from, scope)
        except ExpressionError as e:
            raise BaggageError(f"{label}.from: {e}") from None
        if spec.namespace:
            _accrete(out, spec.namespace, value, label)
        elif isinstance(value, Mapping):
            for key, sub in value.items():
                _accrete(out, key, sub, label)
        else:
            raise BaggageError(f"{label}.from: {spec.bulk_from!r} is not an object")
    return out


def apply_claims(context: Mapping[str, Any], spec: BaggageSpec | None, scope: Scope) -> dict[str, Any]:
    """Evaluate C{spec} and accrete it onto C{context} (a new mapping)."""
    if spec is None:
        return copy_json(dict(context))
    claimed = project(spec, scope)
    return merge_baggage(context, claimed)
