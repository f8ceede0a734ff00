"""
Path and C{{template}} expressions used by C{with}, C{baggage}, C{if} and the
C{relay:} step (contract §3.2, §3.3, §1.13).

Three roots exist: C{payload}, C{context} and C{config}.  A path is the root
optionally followed by dotted segments (C{payload.meta.id}); a numeric segment
indexes a list.  A template is any string containing C{{} or C{}}; each
C{{path}} placeholder is replaced.  A template that is exactly one placeholder
(C{"{payload.n}"}) keeps the referenced value's type; any other template
yields a string.  A path that does not resolve is an L{ExpressionError}: the
runtime never silently substitutes null.
"""
from __future__ import annotations

import json
import re
from typing import Any, Collection, Mapping

import attrs

ROOTS = ("payload", "context", "config")

_SEGMENT = r"[^.{}\s]+"
PATH_RE = re.compile(rf"^(payload|context|config)(?:\.{_SEGMENT})*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class ExpressionError(Exception):
    """An expression could not be evaluated; the message names the path."""


@attrs.frozen
class Scope:
    """One snapshot of the data an expression can see."""

    payload: Mapping[str, Any] = attrs.field(factory=dict)
    context: Mapping[str, Any] = attrs.field(factory=dict)
    config: Mapping[str, Any] = attrs.field(factory=dict)

    def root(self, name: str) -> Mapping[str, Any]:
        return {"payload": self.payload, "context": self.context, "config": self.config}[name]


_MISSING = object()


def lookup(path: str, scope: Scope) -> tuple[bool, Any]:
    """
    Resolve C{path}; return C{(found, value)}.  A missing path is
    C{(False, None)}, never an exception (predicates compare it as null).
    """
    parts = path.strip().split(".")
    if parts[0] not in ROOTS:
        return False, None
    value: Any = scope.root(parts[0])
    for part in parts[1:]:
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            return False, None
    return True, value


def resolve_path(path: str, scope: Scope) -> Any:
    """Resolve C{path} or raise L{ExpressionError} naming it."""
    found, value = lookup(path, scope)
    if not found:
        raise ExpressionError(f"path {path.strip()!r} not found")
    return value


def is_path(text: str) -> bool:
    return bool(PATH_RE.match(text.strip()))


def is_template(expr: Any) -> bool:
    return isinstance(expr, str) and ("{" in expr or "}" in expr)


def _format(value: Any) -> str:
    """Text of one placeholder: null renders empty (as in Go), JSON otherwise."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def render_template(template: str, scope: Scope) -> Any:
    """Render a C{{template}}; a lone placeholder keeps its value's type."""
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole is not None:
        return resolve_path(whole.group(1), scope)
    return _PLACEHOLDER.sub(lambda m: _format(resolve_path(m.group(1), scope)), template)


def evaluate(expr: Any, scope: Scope) -> Any:
    """
    Evaluate a C{relay:}/C{baggage:} value: a template, else a path (typed).
    A non-string is returned as is.
    """
    if not isinstance(expr, str):
        return expr
    if is_template(expr):
        return render_template(expr, scope)
    return resolve_path(expr, scope)


def evaluate_with(expr: Any, scope: Scope) -> Any:
    """
    Evaluate a step C{with:} value.  As in Go, a string without braces is a
    literal (C{mode: fast}, and also C{payload.x}); only templates resolve.
    """
    if is_template(expr):
        return render_template(expr, scope)
    return expr


def remap(spec: Mapping[str, Any], scope: Scope, *, paths: bool = False) -> dict[str, Any]:
    """
    Evaluate every value of a C{with} mapping against one snapshot.  With
    C{paths=True} (the C{relay:} step) a bare string is a path, not a literal.
    """
    out: dict[str, Any] = {}
    for key in sorted(spec):
        expr = spec[key]
        try:
            out[key] = evaluate(expr, scope) if paths else evaluate_with(expr, scope)
        except ExpressionError as e:
            raise ExpressionError(f"with.{key}: {e}") from None
    return out


def check_path(path: Any, roots: Collection[str] = ROOTS) -> str | None:
    """A compile-time problem with a path, or C{None}."""
    if not isinstance(path, str) or not path.strip():
        return f"path must be a non-empty string, got {path!r}"
    if not is_path(path):
        return f"invalid path {path!r} (expected {' / '.join(r + '.<key>' for r in roots)})"
    if path.strip().split(".")[0] not in roots:
        allowed = " / ".join(r + ".<key>" for r in roots)
        return f"path {path!r} may not use root {path.strip().split('.')[0]!r} here (expected {allowed})"
    return None


def check_expression(expr: Any, roots: Collection[str] = ROOTS, *, literals: bool = True) -> str | None:
    """
    A compile-time problem with an expression, or C{None}: unbalanced
    braces, an empty or invalid placeholder, or (with C{literals=False}) a
    string that is not a path.
    """
    if not isinstance(expr, str):
        return None if literals else f"expression must be a string, got {expr!r}"
    if is_template(expr):
        stripped = _PLACEHOLDER.sub("", expr)
        if "{" in stripped or "}" in stripped:
            return f"template {expr!r} has unbalanced braces"
        for match in _PLACEHOLDER.finditer(expr):
            problem = check_path(match.group(1).strip(), roots)
            if problem:
                return f"template {expr!r}: {problem}"
        return None
    if is_path(expr) or not literals:
        return check_path(expr, roots)
    return None
