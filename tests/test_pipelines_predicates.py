"""
Tests for L{ductile.pipelines.predicates}: every op, all/any/not, strict typing.
"""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ductile.pipelines.expressions import Scope
from ductile.pipelines.predicates import compile_predicate

SCOPE = Scope(
    payload={
        "n": 5, "f": 2.5, "s": "Hello World", "b": True, "zero": 0, "none": None,
        "tags": ["a", "b"], "kind": "video", "obj": {"k": 1},
    },
    context={"trace_id": "tr-9"},
    config={"mode": "fast"},
)


def ev(spec: Any, scope: Scope = SCOPE) -> bool:
    pred, errors = compile_predicate(spec)
    assert not errors, errors
    assert pred is not None
    return pred.evaluate(scope)


class OpTests(SynchronousTestCase):
    def test_exists(self) -> None:
        self.assertTrue(ev({"path": "payload.n", "op": "exists"}))
        self.assertTrue(ev({"path": "payload.zero", "op": "exists"}))
        self.assertFalse(ev({"path": "payload.missing", "op": "exists"}))
        self.assertFalse(ev({"path": "payload.none", "op": "exists"}))

    def test_eq_neq(self) -> None:
        self.assertTrue(ev({"path": "payload.kind", "op": "eq", "value": "video"}))
        self.assertFalse(ev({"path": "payload.kind", "op": "eq", "value": "Video"}))
        self.assertTrue(ev({"path": "payload.n", "op": "eq", "value": 5.0}))
        self.assertTrue(ev({"path": "payload.obj", "op": "eq", "value": {"k": 1}}))
        self.assertTrue(ev({"path": "payload.kind", "op": "neq", "value": "audio"}))
        self.assertFalse(ev({"path": "payload.kind", "op": "neq", "value": "video"}))

    def test_no_coercion(self) -> None:
        self.assertFalse(ev({"path": "payload.n", "op": "eq", "value": "5"}))
        self.assertTrue(ev({"path": "payload.n", "op": "neq", "value": "5"}))
        # bool is not a number
        self.assertFalse(ev({"path": "payload.b", "op": "eq", "value": 1}))
        self.assertFalse(ev({"path": "payload.zero", "op": "eq", "value": False}))
        self.assertFalse(ev({"path": "payload.b", "op": "gt", "value": 0}))
        self.assertTrue(ev({"path": "payload.b", "op": "eq", "value": True}))
        self.assertFalse(ev({"path": "payload.tags", "op": "eq", "value": ["a", True]}))

    def test_missing_compares_as_null(self) -> None:
        self.assertTrue(ev({"path": "payload.missing", "op": "eq", "value": None}))
        self.assertTrue(ev({"path": "payload.none", "op": "eq", "value": None}))
        self.assertFalse(ev({"path": "payload.missing", "op": "eq", "value": 0}))
        self.assertTrue(ev({"path": "payload.missing", "op": "neq", "value": "x"}))
        self.assertFalse(ev({"path": "payload.missing", "op": "lt", "value": 1}))
        self.assertFalse(ev({"path": "payload.missing", "op": "contains", "value": "x"}))

    def test_in(self) -> None:
        self.assertTrue(ev({"path": "payload.kind", "op": "in", "value": ["audio", "video"]}))
        self.assertFalse(ev({"path": "payload.kind", "op": "in", "value": ["audio"]}))
        self.assertFalse(ev({"path": "payload.n", "op": "in", "value": ["5"]}))
        self.assertFalse(ev({"path": "payload.b", "op": "in", "value": [1]}))

    def test_ordering(self) -> None:
        self.assertTrue(ev({"path": "payload.n", "op": "gt", "value": 4}))
        self.assertFalse(ev({"path": "payload.n", "op": "gt", "value": 5}))
        self.assertTrue(ev({"path": "payload.n", "op": "gte", "value": 5}))
        self.assertTrue(ev({"path": "payload.f", "op": "lt", "value": 3}))
        self.assertFalse(ev({"path": "payload.f", "op": "lt", "value": 2.5}))
        self.assertTrue(ev({"path": "payload.f", "op": "lte", "value": 2.5}))
        self.assertTrue(ev({"path": "payload.kind", "op": "gt", "value": "audio"}))
        # mismatched types never order
        self.assertFalse(ev({"path": "payload.n", "op": "gt", "value": "1"}))
        self.assertFalse(ev({"path": "payload.s", "op": "lt", "value": 100}))

    def test_string_ops_case_insensitive(self) -> None:
        self.assertTrue(ev({"path": "payload.s", "op": "contains", "value": "WORLD"}))
        self.assertFalse(ev({"path": "payload.s", "op": "contains", "value": "planet"}))
        self.assertTrue(ev({"path": "payload.s", "op": "startswith", "value": "hello"}))
        self.assertFalse(ev({"path": "payload.s", "op": "startswith", "value": "world"}))
        self.assertTrue(ev({"path": "payload.s", "op": "endswith", "value": "WORLD"}))
        self.assertFalse(ev({"path": "payload.n", "op": "startswith", "value": "5"}))

    def test_contains_list(self) -> None:
        self.assertTrue(ev({"path": "payload.tags", "op": "contains", "value": "a"}))
        self.assertFalse(ev({"path": "payload.tags", "op": "contains", "value": "A"}))

    def test_regex_full_match(self) -> None:
        self.assertTrue(ev({"path": "payload.s", "op": "regex", "value": "Hello \\w+"}))
        self.assertFalse(ev({"path": "payload.s", "op": "regex", "value": "Hello"}))
        self.assertFalse(ev({"path": "payload.n", "op": "regex", "value": "5"}))

    def test_context_and_config_roots(self) -> None:
        self.assertTrue(ev({"path": "context.trace_id", "op": "startswith", "value": "tr-"}))
        self.assertTrue(ev({"path": "config.mode", "op": "eq", "value": "fast"}))


class CombinatorTests(SynchronousTestCase):
    T = {"path": "payload.n", "op": "eq", "value": 5}
    F = {"path": "payload.n", "op": "eq", "value": 6}

    def test_all(self) -> None:
        self.assertTrue(ev({"all": [self.T, self.T]}))
        self.assertFalse(ev({"all": [self.T, self.F]}))

    def test_any(self) -> None:
        self.assertTrue(ev({"any": [self.F, self.T]}))
        self.assertFalse(ev({"any": [self.F, self.F]}))

    def test_not(self) -> None:
        self.assertTrue(ev({"not": self.F}))
        self.assertFalse(ev({"not": self.T}))

    def test_nested(self) -> None:
        self.assertTrue(ev({"all": [{"any": [self.F, {"not": self.F}]}, self.T]}))


class ValidationTests(SynchronousTestCase):
    def errors(self, spec: Any, **kw: Any) -> list[str]:
        pred, errors = compile_predicate(spec, **kw)
        self.assertIsNone(pred)
        return errors

    def test_messages(self) -> None:
        self.assertEqual(self.errors({"path": "payload.x", "op": "like", "value": 1}),
                         ["if: unknown op 'like' (expected one of exists, eq, neq, in, gt, gte, lt, "
                          "lte, contains, startswith, endswith, regex)"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "regex", "value": "("}),
                         ["if: invalid regex '(': missing ), unterminated subpattern at position 0"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "in", "value": "a"}),
                         ["if: op in needs a list value, got 'a'"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "gt", "value": True}),
                         ["if: op gt needs a number or string value, got True"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "eq"}), ["if: op eq needs a value"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "exists", "value": 1}),
                         ["if: op exists takes no value"])
        self.assertEqual(self.errors({"path": "payload.x", "op": "startswith", "value": 1}),
                         ["if: op startswith needs a string value, got 1"])
        self.assertEqual(self.errors({"path": "body.x", "op": "exists"}),
                         ["if: invalid path 'body.x' (expected payload.<key> / context.<key> / config.<key>)"])
        self.assertEqual(self.errors({"all": []}), ["if.all: must be a non-empty list"])
        self.assertEqual(self.errors({"all": [{"path": "payload.a", "op": "eq"}], "any": []}),
                         ["if: must have exactly one of path, all, any, not"])
        self.assertEqual(self.errors({"any": [{"path": "payload.a", "op": "exists"}, {"op": "eq"}]}),
                         ["if.any[1]: must have exactly one of path, all, any, not"])
        self.assertEqual(self.errors({"not": {"path": "payload.a", "op": "nope"}}),
                         ["if.not: unknown op 'nope' (expected one of exists, eq, neq, in, gt, gte, lt, "
                          "lte, contains, startswith, endswith, regex)"])
        self.assertEqual(self.errors("payload.a == 1"), ["if: must be a mapping, got str"])

    def test_config_root_restricted(self) -> None:
        self.assertEqual(
            self.errors({"path": "config.mode", "op": "exists"}, roots=("payload", "context")),
            ["if: path 'config.mode' may not use root 'config' here (expected payload.<key> / context.<key>)"],
        )
