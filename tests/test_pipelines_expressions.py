"""
Tests for L{ductile.pipelines.expressions} and L{ductile.pipelines.context}.
"""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ductile.pipelines.context import BaggageError, BaggageSpec, apply_claims, baggage_of, project
from ductile.pipelines.expressions import (
    ExpressionError,
    Scope,
    check_expression,
    evaluate,
    evaluate_with,
    lookup,
    remap,
)

SCOPE = Scope(
    payload={"n": 3, "name": "nightly", "meta": {"id": "a1", "tags": ["x", "y"]}, "flag": False, "none": None},
    context={"trace_id": "tr-1", "web": {"url": "http://h"}},
    config={"bucket": "cold"},
)


class PathTests(SynchronousTestCase):
    def test_nested_and_list_index(self) -> None:
        self.assertEqual(lookup("payload.meta.id", SCOPE), (True, "a1"))
        self.assertEqual(lookup("context.web.url", SCOPE), (True, "http://h"))
        self.assertEqual(lookup("config.bucket", SCOPE), (True, "cold"))

    def test_missing(self) -> None:
        self.assertEqual(lookup("payload.meta.nope", SCOPE), (False, None))
        self.assertEqual(lookup("payload.n.deeper", SCOPE), (False, None))
        # as in Go, lists are not indexed by path
        self.assertEqual(lookup("payload.meta.tags.1", SCOPE), (False, None))
        self.assertEqual(lookup("other.x", SCOPE), (False, None))

    def test_whole_root(self) -> None:
        self.assertEqual(evaluate("context", SCOPE), SCOPE.context)

    def test_present_null_resolves(self) -> None:
        self.assertIsNone(evaluate("payload.none", SCOPE))


class EvaluateTests(SynchronousTestCase):
    def test_pure_reference_keeps_type(self) -> None:
        self.assertEqual(evaluate("{payload.n}", SCOPE), 3)
        self.assertEqual(evaluate("{payload.meta}", SCOPE), {"id": "a1", "tags": ["x", "y"]})
        self.assertIs(evaluate("{payload.flag}", SCOPE), False)

    def test_bare_path_keeps_type(self) -> None:
        self.assertEqual(evaluate("payload.n", SCOPE), 3)
        self.assertEqual(evaluate("payload.meta.tags", SCOPE), ["x", "y"])

    def test_mixed_template_is_string(self) -> None:
        self.assertEqual(evaluate("n={payload.n}", SCOPE), "n=3")
        self.assertEqual(evaluate("{payload.name}-{context.trace_id}", SCOPE), "nightly-tr-1")
        self.assertEqual(evaluate("f={payload.flag} t={payload.meta.tags}", SCOPE), 'f=false t=["x","y"]')
        self.assertEqual(evaluate("[{payload.none}]", SCOPE), "[]")
        self.assertEqual(evaluate("{payload.n}", Scope(payload={"n": 3.0})), 3.0)
        self.assertEqual(evaluate("n={payload.n}", Scope(payload={"n": 3.0})), "n=3")
        self.assertEqual(evaluate("n={payload.n}", Scope(payload={"n": 2.5})), "n=2.5")

    def test_with_bare_strings_are_literals(self) -> None:
        # Go's with: only resolves {templates}; a bare string is a literal.
        self.assertEqual(evaluate_with("fast", SCOPE), "fast")
        self.assertEqual(evaluate_with("payload.n", SCOPE), "payload.n")
        self.assertEqual(evaluate_with("{payload.n}", SCOPE), 3)
        self.assertEqual(evaluate_with(7, SCOPE), 7)
        self.assertEqual(remap({"p": "payload.n"}, SCOPE, paths=True), {"p": 3})
        self.assertEqual(evaluate(7, SCOPE), 7)

    def test_missing_path_names_path(self) -> None:
        e = self.assertRaises(ExpressionError, evaluate, "payload.missing", SCOPE)
        self.assertEqual(str(e), "path 'payload.missing' not found")
        e = self.assertRaises(ExpressionError, evaluate, "x-{context.nope}", SCOPE)
        self.assertEqual(str(e), "path 'context.nope' not found")

    def test_remap_names_key(self) -> None:
        self.assertEqual(remap({"a": "{payload.n}", "b": "id={payload.meta.id}"}, SCOPE), {"a": 3, "b": "id=a1"})
        e = self.assertRaises(ExpressionError, remap, {"url": "{payload.link}"}, SCOPE)
        self.assertEqual(str(e), "with.url: path 'payload.link' not found")

    def test_check_expression(self) -> None:
        self.assertIsNone(check_expression("{payload.a} and {context.b}"))
        self.assertEqual(check_expression("{payload.a"), "template '{payload.a' has unbalanced braces")
        self.assertEqual(
            check_expression("{nope.a}"),
            "template '{nope.a}': invalid path 'nope.a' (expected payload.<key> / context.<key> / config.<key>)",
        )
        self.assertEqual(
            check_expression("fast", literals=False),
            "invalid path 'fast' (expected payload.<key> / context.<key> / config.<key>)",
        )
        self.assertEqual(
            check_expression("config.x", roots=("payload", "context")),
            "path 'config.x' may not use root 'config' here (expected payload.<key> / context.<key>)",
        )


class BaggageTests(SynchronousTestCase):
    def test_claims_accrete_nested(self) -> None:
        spec = BaggageSpec(mappings={"web.id": "payload.meta.id", "count": "payload.n"})
        out = apply_claims({"trace_id": "tr-1"}, spec, SCOPE)
        self.assertEqual(out, {"trace_id": "tr-1", "web": {"id": "a1"}, "count": 3})

    def test_inherited_value_may_repeat(self) -> None:
        spec = BaggageSpec(mappings={"trace_id": "context.trace_id"})
        self.assertEqual(apply_claims({"trace_id": "tr-1"}, spec, SCOPE), {"trace_id": "tr-1"})

    def test_inherited_value_cannot_change(self) -> None:
        spec = BaggageSpec(mappings={"trace_id": "payload.name"})
        e = self.assertRaises(BaggageError, apply_claims, {"trace_id": "tr-1"}, spec, SCOPE)
        self.assertEqual(str(e), "baggage: baggage 'trace_id' is already 'tr-1' and cannot change to 'nightly'")

    def test_type_change_is_a_change(self) -> None:
        spec = BaggageSpec(mappings={"n": "payload.n"})
        self.assertRaises(BaggageError, apply_claims, {"n": 3.0}, spec, SCOPE)
        self.assertRaises(BaggageError, apply_claims, {"n": "3"}, spec, SCOPE)

    def test_missing_source_path(self) -> None:
        spec = BaggageSpec(mappings={"x": "payload.absent"})
        e = self.assertRaises(BaggageError, apply_claims, {}, spec, SCOPE)
        self.assertEqual(str(e), "baggage.x: path 'payload.absent' not found")

    def test_bulk_namespace(self) -> None:
        spec = BaggageSpec(bulk_from="payload.meta", namespace="src")
        self.assertEqual(project(spec, SCOPE), {"src": {"id": "a1", "tags": ["x", "y"]}})
        spec = BaggageSpec(bulk_from="payload.gone", namespace="src")
        e = self.assertRaises(BaggageError, project, spec, SCOPE)
        self.assertEqual(str(e), "baggage.from: path 'payload.gone' not found")

    def test_nested_object_merges_but_leaves_cannot_change(self) -> None:
        spec = BaggageSpec(bulk_from="payload.meta", namespace="src")
        ok = apply_claims({"src": {"other": 1}}, spec, SCOPE)
        self.assertEqual(ok, {"src": {"other": 1, "id": "a1", "tags": ["x", "y"]}})
        self.assertRaises(BaggageError, apply_claims, {"src": {"id": "zz"}}, spec, SCOPE)

    def test_baggage_of_strips_internal(self) -> None:
        ctx = {"trace_id": "t", "ductile_pipeline": "p", "ductile_step_id": "s",
               "ductile_pipeline_instance_id": "i", "ductile_route_depth": 1,
               "ductile_route_max_depth": 2, "ductile_plugin": "x"}
        self.assertEqual(baggage_of(ctx), {"trace_id": "t"})
