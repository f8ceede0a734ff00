"""
C{if:} predicates (contract §3.2).

Shapes: an atomic C{{path, op, value?}} or C{all: [..]}, C{any: [..]},
C{not: {..}}.  Typing is strict: no coercion, a missing path compares as
null, and a bool is never a number.  A comparison between mismatched types
is simply false, never an error, so a predicate cannot poison routing.
"""
from __future__ import annotations

import re
from typing import Any, Collection, Mapping, Sequence

import attrs

from ductile.pipelines.expressions import ROOTS, Scope, check_path, lookup

OPS = (
    "exists", "eq", "neq", "in", "gt", "gte", "lt", "lte",
    "contains", "startswith", "endswith", "regex",
)
_ORDERING = {"gt", "gte", "lt", "lte"}
_STRING_OPS = {"startswith", "endswith", "regex"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strict_eq(a: Any, b: Any) -> bool:
    """JSON equality: numbers compare by value, bool only with bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if type(a) is not type(b):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            pass
        elif isinstance(a, list) and isinstance(b, list):
            pass
        else:
            return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_strict_eq(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_strict_eq(x, y) for x, y in zip(a, b))
    return bool(a == b)


class Predicate:
    """A compiled predicate node."""

    def evaluate(self, scope: Scope) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@attrs.frozen
class Atomic(Predicate):
    path: str
    op: str
    value: Any = None
    pattern: "re.Pattern[str] | None" = None

    def evaluate(self, scope: Scope) -> bool:
        found, actual = lookup(self.path, scope)
        op, want = self.op, self.value
        if op == "exists":
            return found and actual is not None
        if op == "eq":
            return _strict_eq(actual, want)
        if op == "neq":
            return not _strict_eq(actual, want)
        if op == "in":
            return any(_strict_eq(actual, item) for item in want)
        if op in _ORDERING:
            if _is_number(actual) and _is_number(want):
                pass
            elif isinstance(actual, str) and isinstance(want, str):
                pass
            else:
                return False
            return {
                "gt": actual > want, "gte": actual >= want,
                "lt": actual < want, "lte": actual <= want,
            }[op]
        if op == "contains":
            if isinstance(actual, str) and isinstance(want, str):
                return want.casefold() in actual.casefold()
            if isinstance(actual, list):
                return any(_strict_eq(item, want) for item in actual)
            return False
        if not isinstance(actual, str):
            return False
        if op == "startswith":
            return actual.casefold().startswith(want.casefold())
        if op == "endswith":
            return actual.casefold().endswith(want.casefold())
        assert self.pattern is not None
        return self.pattern.fullmatch(actual) is not None


@attrs.frozen
class All(Predicate):
    items: tuple[Predicate, ...]

    def evaluate(self, scope: Scope) -> bool:
        return all(p.evaluate(scope) for p in self.items)


@attrs.frozen
class AnyOf(Predicate):
    items: tuple[Predicate, ...]

    def evaluate(self, scope: Scope) -> bool:
        return any(p.evaluate(scope) for p in self.items)


@attrs.frozen
class Not(Predicate):
    item: Predicate

    def evaluate(self, scope: Scope) -> bool:
        return not self.item.evaluate(scope)


def compile_predicate(
    spec: Any, roots: Collection[str] = ROOTS, where: str = "if"
) -> tuple[Predicate | None, list[str]]:
    """
    Compile an C{if:} tree.  Returns the predicate (C{None} when invalid)
    and every problem found, each prefixed with its position (C{if.all[1]}).
    """
    errors: list[str] = []
    pred = _compile(spec, tuple(roots), where, errors)
    return (pred if not errors else None), errors


def _compile(spec: Any, roots: Sequence[str], where: str, errors: list[str]) -> Predicate | None:
    if not isinstance(spec, Mapping):
        errors.append(f"{where}: must be a mapping, got {type(spec).__name__}")
        return None
    shapes = [k for k in ("all", "any", "not", "path") if k in spec]
    if len(shapes) != 1:
        errors.append(f"{where}: must have exactly one of path, all, any, not")
        return None
    shape = shapes[0]
    if shape in ("all", "any"):
        items = spec[shape]
        extra = set(spec) - {shape}
        if extra:
            errors.append(f"{where}: unexpected keys {sorted(extra)} beside {shape}")
        if not isinstance(items, list) or not items:
            errors.append(f"{where}.{shape}: must be a non-empty list")
            return None
        compiled = [_compile(item, roots, f"{where}.{shape}[{i}]", errors) for i, item in enumerate(items)]
        parts = tuple(p for p in compiled if p is not None)
        return All(parts) if shape == "all" else AnyOf(parts)
    if shape == "not":
        extra = set(spec) - {"not"}
        if extra:
            errors.append(f"{where}: unexpected keys {sorted(extra)} beside not")
        inner = _compile(spec["not"], roots, f"{where}.not", errors)
        return Not(inner) if inner is not None else None
    return _compile_atomic(spec, roots, where, errors)


def _compile_atomic(spec: Mapping[str, Any], roots: Sequence[str], where: str, errors: list[str]) -> Predicate | None:
    before = len(errors)
    extra = set(spec) - {"path", "op", "value"}
    if extra:
        errors.append(f"{where}: unexpected keys {sorted(extra)}")
    path = spec.get("path")
    problem = check_path(path, roots)
    if problem:
        errors.append(f"{where}: {problem}")
    op = spec.get("op")
    if op not in OPS:
        errors.append(f"{where}: unknown op {op!r} (expected one of {', '.join(OPS)})")
        return None
    has_value = "value" in spec
    value = spec.get("value")
    pattern = None
    if op == "exists":
        if has_value:
            errors.append(f"{where}: op exists takes no value")
    elif not has_value:
        errors.append(f"{where}: op {op} needs a value")
    elif op == "in" and not isinstance(value, list):
        errors.append(f"{where}: op in needs a list value, got {value!r}")
    elif op in _ORDERING and not (_is_number(value) or isinstance(value, str)):
        errors.append(f"{where}: op {op} needs a number or string value, got {value!r}")
    elif (op in _STRING_OPS or op == "contains") and not isinstance(value, str):
        if op != "contains":
            errors.append(f"{where}: op {op} needs a string value, got {value!r}")
    if op == "regex" and isinstance(value, str):
        try:
            pattern = re.compile(value)
        except re.error as e:
            errors.append(f"{where}: invalid regex {value!r}: {e}")
    if len(errors) != before:
        return None
    return Atomic(path=path.strip(), op=op, value=value, pattern=pattern)
