"""
Tests for L{ductile.pipelines.router}: pure routing simulated step by step.
"""
from __future__ import annotations

from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase

from ductile.events import Event
from ductile.pipelines.router import Dispatch, Router, UnknownPipeline
from tests.test_pipelines_compiler import compile_yaml

SEED = """
pipelines:
  - name: process-offsite-backup
    on: backup.ready
    steps:
      - id: verify-backup
        uses: backup-verifier
      - id: store-backup
        uses: cold-storage-sync
"""


def event(type: str, payload: Mapping[str, Any] | None = None, source: str = "test", key: str | None = None) -> Event:
    return Event.create(type, payload or {}, source, 1000.0, key)


def succeeded(result: str = "ok", source: str = "x") -> Event:
    return event("ductile.step.succeeded", {"result": result}, source)


def router(text: str, **kw: Any) -> Router:
    return Router(compile_yaml(text, **kw))


def steps(dispatches: list[Dispatch]) -> list[tuple[str, str, str]]:
    return [(d.pipeline, d.step_id, d.plugin) for d in dispatches]


def after(r: Router, d: Dispatch, ev: Event | None = None) -> list[Dispatch]:
    """Simulate job C{d} finishing and emitting C{ev} (default: none)."""
    assert d.error is None, d.error
    return r.route_next(ev or succeeded(source=d.plugin), d.context, d.plugin)


class SeedTests(SynchronousTestCase):
    def test_backup_ready_runs_verify_then_store(self) -> None:
        r = router(SEED)
        root = event("backup.ready", {"archive_id": "nightly-2026-05-03"}, "relay:home-primary",
                     "backup.ready:nightly-2026-05-03")
        first = r.route_root(root, baggage={"trace_id": "tr-789"})
        self.assertEqual(steps(first), [("process-offsite-backup", "verify-backup", "backup-verifier")])
        d = first[0]
        self.assertEqual(d.command, "handle")
        self.assertEqual(d.dedupe_key, "backup.ready:nightly-2026-05-03")
        self.assertEqual(d.event.event_id, root.event_id)
        self.assertEqual(d.event.payload["archive_id"], "nightly-2026-05-03")
        self.assertEqual(d.event.payload["trace_id"], "tr-789")
        self.assertEqual(d.context["trace_id"], "tr-789")
        self.assertEqual(d.context["ductile_pipeline"], "process-offsite-backup")
        self.assertEqual(d.context["ductile_step_id"], "verify-backup")
        self.assertEqual(d.context["ductile_route_depth"], 1)
        self.assertEqual(d.context["ductile_route_max_depth"], 2)
        self.assertFalse(r.is_terminal(d.context))

        second = after(r, d)
        self.assertEqual(steps(second), [("process-offsite-backup", "store-backup", "cold-storage-sync")])
        self.assertEqual(second[0].instance_id, d.instance_id)
        self.assertEqual(second[0].context["trace_id"], "tr-789")
        self.assertEqual(second[0].route_depth, 2)
        self.assertTrue(r.is_terminal(second[0].context))
        self.assertEqual(after(r, second[0]), [])

    def test_immediate_data_wins_over_context(self) -> None:
        r = router(SEED)
        d = r.route_root(event("backup.ready", {"trace_id": "from-payload"}), baggage={"trace_id": "ctx"})[0]
        self.assertEqual(d.event.payload["trace_id"], "from-payload")
        self.assertEqual(d.context["trace_id"], "ctx")

    def test_unrouted_event_is_not_an_error(self) -> None:
        self.assertEqual(router(SEED).route_root(event("nothing.here")), [])

    def test_route_pipeline_by_name(self) -> None:
        r = router(SEED)
        ds = r.route_pipeline("process-offsite-backup", event("api.trigger", {"x": 1}))
        self.assertEqual(steps(ds), [("process-offsite-backup", "verify-backup", "backup-verifier")])
        e = self.assertRaises(UnknownPipeline, r.route_pipeline, "nope", event("x"))
        self.assertEqual(str(e), "unknown pipeline 'nope'")
        self.assertIsInstance(e, KeyError)
        self.assertEqual(r.pipeline_names(), ["process-offsite-backup"])


class MatchingTests(SynchronousTestCase):
    TEXT = """
pipelines:
  - name: one
    on: thing.happened
    steps: [{id: s, uses: a}]
  - name: two
    on: thing.happened
    steps: [{id: s, uses: b}]
  - name: prefix
    on: thing
    steps: [{id: s, uses: c}]
  - name: only-from-emitter
    on: thing.happened
    from_plugin: emitter
    steps: [{id: s, uses: d}]
  - name: gated
    on: thing.happened
    if: {path: payload.size, op: gt, value: 10}
    steps: [{id: s, uses: e}]
"""

    def test_exact_match_fan_out(self) -> None:
        r = router(self.TEXT)
        ds = r.route_root(event("thing.happened", {"size": 1}))
        self.assertEqual(steps(ds), [("one", "s", "a"), ("two", "s", "b")])
        self.assertNotEqual(ds[0].instance_id, ds[1].instance_id)
        self.assertEqual(r.route_root(event("thing.happened.more")), [])
        self.assertEqual(r.route_root(event("Thing.Happened")), [])

    def test_trigger_if_context(self) -> None:
        r = router("""
pipelines:
  - name: ctx
    on: thing.happened
    if: {path: context.tier, op: eq, value: gold}
    steps: [{id: s, uses: a}]
  - name: src
    on: src.start
    steps: [{id: s, uses: b}]
""")
        # root ingress: the trigger predicate sees no context, even with baggage
        self.assertEqual(r.route_root(event("thing.happened"), baggage={"tier": "gold"}), [])
        (src,) = r.route_root(event("src.start"), baggage={"tier": "gold"})
        ds = r.route_next(event("thing.happened", {}, "b"), src.context, "b")
        self.assertEqual(steps(ds), [("ctx", "s", "a")])

    def test_from_plugin(self) -> None:
        r = router(self.TEXT)
        self.assertIn(("only-from-emitter", "s", "d"), steps(r.route_root(event("thing.happened"), source_plugin="emitter")))
        self.assertNotIn(("only-from-emitter", "s", "d"), steps(r.route_root(event("thing.happened"), source_plugin="a")))
        self.assertNotIn(("only-from-emitter", "s", "d"), steps(r.route_root(event("thing.happened"))))

    def test_trigger_if(self) -> None:
        r = router(self.TEXT)
        self.assertIn(("gated", "s", "e"), steps(r.route_root(event("thing.happened", {"size": 11}))))
        self.assertNotIn(("gated", "s", "e"), steps(r.route_root(event("thing.happened", {"size": "11"}))))


class FlowTests(SynchronousTestCase):
    THREE = """
pipelines:
  - name: chain
    on: chain.start
    steps:
      - id: fetch
        uses: a
      - id: transform
        uses: b
        with:
          count: "{payload.n}"
          label: "n={payload.n}"
          doc: "{payload.doc}"
          mode: fast
          literal: payload.n
      - id: store
        uses: c
"""

    def test_three_steps_payload_flows(self) -> None:
        r = router(self.THREE)
        d1 = r.route_root(event("chain.start", {"url": "http://x"}))[0]
        self.assertEqual(d1.step_id, "fetch")
        d2 = after(r, d1, event("page.fetched", {"n": 4, "doc": {"title": "t"}}, "a"))[0]
        self.assertEqual(d2.step_id, "transform")
        self.assertEqual(d2.event.type, "page.fetched")
        self.assertEqual(d2.event.payload["count"], 4)
        self.assertEqual(d2.event.payload["label"], "n=4")
        self.assertEqual(d2.event.payload["doc"], {"title": "t"})
        self.assertEqual(d2.event.payload["mode"], "fast")
        self.assertEqual(d2.event.payload["literal"], "payload.n")
        self.assertEqual(d2.event.payload["n"], 4)
        d3 = after(r, d2, event("page.transformed", {"summary": "short"}, "b"))[0]
        self.assertEqual(d3.step_id, "store")
        self.assertEqual(d3.event.payload["summary"], "short")
        self.assertNotIn("count", d3.event.payload)
        self.assertEqual({d1.instance_id, d2.instance_id, d3.instance_id}, {d1.instance_id})
        self.assertEqual([d.route_depth for d in (d1, d2, d3)], [1, 2, 3])

    def test_with_bad_path_fails_the_job(self) -> None:
        r = router(self.THREE)
        d1 = r.route_root(event("chain.start"))[0]
        (d2,) = after(r, d1, event("page.fetched", {"n": 4}, "a"))
        self.assertEqual(d2.step_id, "transform")
        self.assertEqual(d2.error, "pipeline \"chain\" step \"transform\": with.doc: path 'payload.doc' not found")

    def test_every_emitted_event_continues(self) -> None:
        r = router(self.THREE)
        d1 = r.route_root(event("chain.start"))[0]
        a = after(r, d1, event("page.fetched", {"n": 1, "doc": 1}, "a"))
        b = after(r, d1, event("page.fetched", {"n": 2, "doc": 2}, "a"))
        self.assertEqual([a[0].event.payload["count"], b[0].event.payload["count"]], [1, 2])

    def test_emitted_event_also_starts_new_roots_with_baggage(self) -> None:
        r = router(self.THREE + """
  - name: side
    on: page.fetched
    steps: [{id: audit, uses: d}]
""")
        d1 = r.route_root(event("chain.start"), baggage={"trace_id": "t1"})[0]
        ds = after(r, d1, event("page.fetched", {"n": 1, "doc": 1}, "a"))
        self.assertEqual(steps(ds), [("chain", "transform", "b"), ("side", "audit", "d")])
        side = ds[1]
        self.assertNotEqual(side.instance_id, d1.instance_id)
        self.assertEqual(side.context["trace_id"], "t1")
        self.assertEqual(side.route_depth, 2)
        self.assertEqual(side.context["ductile_route_max_depth"], 2)


class StructureRoutingTests(SynchronousTestCase):
    def test_split_then_continuation(self) -> None:
        r = router("""
pipelines:
  - name: sp
    on: go.now
    steps:
      - id: first
        uses: a
      - split:
          - id: left
            uses: b
          - steps:
              - id: r1
                uses: c
              - id: r2
                uses: d
      - id: join
        uses: e
""")
        first = r.route_root(event("go.now"))[0]
        branches = after(r, first)
        self.assertEqual(steps(branches), [("sp", "left", "b"), ("sp", "r1", "c")])
        left, r1 = branches
        self.assertEqual(steps(after(r, left)), [("sp", "join", "e")])
        (r2,) = after(r, r1)
        self.assertEqual(r2.step_id, "r2")
        self.assertEqual(steps(after(r, r2)), [("sp", "join", "e")])

    def test_split_at_entry(self) -> None:
        r = router("""
pipelines:
  - name: sp
    on: go.now
    steps:
      - split: [{id: x, uses: a}, {id: y, uses: b}]
""")
        ds = r.route_root(event("go.now"))
        self.assertEqual(steps(ds), [("sp", "x", "a"), ("sp", "y", "b")])
        self.assertEqual(ds[0].instance_id, ds[1].instance_id)

    def test_call_runs_inline_and_continues(self) -> None:
        r = router("""
pipelines:
  - name: caller
    on: go.now
    steps:
      - id: sub
        call: callee
      - id: post
        uses: d
  - name: callee
    on: callee.start
    steps:
      - id: c1
        uses: b
      - id: c2
        uses: c
""")
        (c1,) = r.route_root(event("go.now"))
        self.assertEqual((c1.pipeline, c1.step_id, c1.plugin), ("caller", "sub/c1", "b"))
        (c2,) = after(r, c1)
        self.assertEqual(c2.step_id, "sub/c2")
        (post,) = after(r, c2)
        self.assertEqual(post.step_id, "post")
        self.assertEqual(post.instance_id, c1.instance_id)

    def test_conditional_call(self) -> None:
        r = router("""
pipelines:
  - name: caller
    on: go.now
    steps:
      - id: sub
        call: callee
        if: {path: payload.deep, op: eq, value: true}
      - id: post
        uses: d
  - name: callee
    on: callee.start
    steps:
      - id: c1
        uses: b
""")
        self.assertEqual(steps(r.route_root(event("go.now", {"deep": True}))), [("caller", "sub/c1", "b")])
        self.assertEqual(steps(r.route_root(event("go.now", {"deep": "yes"}))), [("caller", "post", "d")])
        # the called pipeline still runs on its own trigger, as its own pipeline
        self.assertEqual(steps(r.route_root(event("callee.start"))), [("callee", "c1", "b")])

    def test_terminal_steps(self) -> None:
        r = router("""
pipelines:
  - name: t
    on: go.now
    steps:
      - id: s
        uses: a
      - split: [{id: x, uses: b}, {id: y, uses: c}]
""")
        (s,) = r.route_root(event("go.now"))
        self.assertFalse(r.is_terminal(s.context))
        x, y = after(r, s)
        self.assertTrue(r.is_terminal(x.context))
        self.assertTrue(r.is_terminal(y.context))
        self.assertTrue(r.is_terminal({}))

    def test_nested_steps(self) -> None:
        r = router("""
pipelines:
  - name: n
    on: go.now
    steps:
      - steps:
          - id: a1
            uses: a
          - steps:
              - id: a2
                uses: b
      - id: a3
        uses: c
""")
        (d,) = r.route_root(event("go.now"))
        seen = [d.step_id]
        while True:
            nxt = after(r, d)
            if not nxt:
                break
            (d,) = nxt
            seen.append(d.step_id)
        self.assertEqual(seen, ["a1", "a2", "a3"])

    def test_step_if_bypasses(self) -> None:
        r = router("""
pipelines:
  - name: c
    on: go.now
    steps:
      - id: only-video
        uses: a
        if: {path: payload.kind, op: eq, value: video}
      - id: always
        uses: b
      - id: guarded-group
        if: {path: context.tier, op: eq, value: gold}
        steps:
          - id: g1
            uses: c
      - id: end
        uses: d
""")
        self.assertEqual(steps(r.route_root(event("go.now", {"kind": "video"}))), [("c", "only-video", "a")])
        (always,) = r.route_root(event("go.now", {"kind": "audio"}), baggage={"tier": "gold"})
        self.assertEqual(always.step_id, "always")
        self.assertEqual(steps(after(r, always)), [("c", "g1", "c")])
        (always,) = r.route_root(event("go.now", {"kind": "audio"}), baggage={"tier": "tin"})
        self.assertEqual(steps(after(r, always)), [("c", "end", "d")])

    def test_step_if_sees_plugin_config(self) -> None:
        p = compile_yaml("""
pipelines:
  - name: c
    on: go.now
    steps:
      - id: s
        uses: a
        if: {path: config.enabled, op: eq, value: true}
""")
        self.assertEqual(len(Router(p, plugin_configs={"a": {"enabled": True}}).route_root(event("go.now"))), 1)
        self.assertEqual(Router(p, plugin_configs={"a": {"enabled": False}}).route_root(event("go.now")), [])


class BaggageRoutingTests(SynchronousTestCase):
    TEXT = """
pipelines:
  - name: b
    on: go.now
    steps:
      - id: claim
        uses: a
        baggage:
          archive.id: payload.archive_id
          trace_id: payload.trace
      - id: bulk
        uses: b
        baggage: {from: payload.meta, namespace: meta}
      - id: use
        uses: c
"""

    def test_claims_accrete_and_flow(self) -> None:
        r = router(self.TEXT)
        (claim,) = r.route_root(event("go.now", {"archive_id": "n1", "trace": "t"}), baggage={"trace_id": "t"})
        self.assertEqual(claim.context["archive"], {"id": "n1"})
        self.assertIsNone(claim.error)
        (bulk,) = after(r, claim, event("x.y", {"meta": {"size": 3}}))
        self.assertEqual(bulk.context["meta"], {"size": 3})
        self.assertEqual(bulk.context["archive"], {"id": "n1"})
        (use,) = after(r, bulk, event("x.z", {}))
        self.assertEqual(use.event.payload["archive"], {"id": "n1"})
        self.assertEqual(use.event.payload["meta"], {"size": 3})

    def test_inherited_value_cannot_change(self) -> None:
        r = router(self.TEXT)
        (claim,) = r.route_root(event("go.now", {"archive_id": "n1", "trace": "other"}), baggage={"trace_id": "t"})
        self.assertEqual(
            claim.error,
            "pipeline \"b\" step \"claim\": baggage: baggage 'trace_id' is already 't' and cannot change to 'other'",
        )

    def test_missing_source_path_fails_job(self) -> None:
        r = router(self.TEXT)
        (claim,) = r.route_root(event("go.now", {"trace": "t"}))
        self.assertEqual(claim.error, "pipeline \"b\" step \"claim\": baggage.archive.id: path 'payload.archive_id' not found")


class DepthTests(SynchronousTestCase):
    def test_guard_refuses_at_max_depth(self) -> None:
        r = router("""
pipelines:
  - name: d
    on: go.now
    max_depth: 2
    steps: [{id: s1, uses: a}, {id: s2, uses: b}, {id: s3, uses: c}]
""")
        (s1,) = r.route_root(event("go.now"))
        (s2,) = after(r, s1)
        self.assertEqual(s2.route_depth, 2)
        self.assertEqual(after(r, s2), [])

    def test_auto_depth_lets_whole_pipeline_run(self) -> None:
        r = router("""
pipelines:
  - name: d
    on: go.now
    steps: [{id: s1, uses: a}, {id: s2, uses: b}, {id: s3, uses: c}]
""")
        (d,) = r.route_root(event("go.now"))
        (d,) = after(r, d)
        (d,) = after(r, d)
        self.assertEqual((d.step_id, d.route_depth, d.context["ductile_route_max_depth"]), ("s3", 3, 3))

    def test_context_max_depth_wins(self) -> None:
        r = router("""
pipelines:
  - name: d
    on: go.now
    steps: [{id: s1, uses: a}, {id: s2, uses: b}]
""")
        (d,) = r.route_root(event("go.now"))
        ctx = {**d.context, "ductile_route_max_depth": 1}
        self.assertEqual(r.route_next(succeeded(), ctx, "a"), [])

    def test_self_retriggering_pipeline_is_bounded(self) -> None:
        r = Router(compile_yaml("""
pipelines:
  - name: loop
    on: loop.tick
    steps: [{id: s, uses: a}]
"""), root_chain_limit=5)
        (d,) = r.route_root(event("loop.tick"))
        hops = 1
        while True:
            nxt = r.route_next(event("loop.tick", {}, "a"), d.context, "a")
            if not nxt:
                break
            (d,) = nxt
            hops += 1
        self.assertEqual((hops, d.route_depth), (5, 5))

    def test_missing_instance_does_not_continue(self) -> None:
        r = router(SEED)
        (d,) = r.route_root(event("backup.ready"))
        ctx = {k: v for k, v in d.context.items() if k != "ductile_pipeline_instance_id"}
        self.assertEqual(r.route_next(succeeded(), ctx, "backup-verifier"), [])


class RelayRoutingTests(SynchronousTestCase):
    TEXT = """
pipelines:
  - name: send
    on: backup.ready
    steps:
      - id: relay-to-lab
        relay:
          to: lab
          event: backup.ready
          dedupe_key: payload.archive_id
          with:
            archive_id: payload.archive_id
            note: "id={payload.archive_id}"
          baggage:
            trace_id: context.trace_id
"""

    def test_resolves_dedupe_with_baggage(self) -> None:
        r = router(self.TEXT, instances={"lab"})
        (d,) = r.route_root(event("backup.ready", {"archive_id": "n1", "archive_path": "/p"}, key="orig"),
                            baggage={"trace_id": "tr-1"})
        self.assertEqual((d.plugin, d.command, d.error), ("core.relay", "handle", None))
        assert d.relay is not None
        self.assertEqual(d.relay.to, "lab")
        self.assertEqual(d.relay.event_type, "backup.ready")
        self.assertEqual(d.relay.payload, {"archive_id": "n1", "note": "id=n1"})
        self.assertEqual(d.relay.dedupe_key, "n1")
        self.assertEqual(d.relay.baggage, {"trace_id": "tr-1"})
        self.assertEqual(d.dedupe_key, "orig")

    def test_defaults(self) -> None:
        r = router("""
pipelines:
  - name: send
    on: backup.ready
    steps:
      - relay: {to: lab, event: backup.ready}
""")
        (d,) = r.route_root(event("backup.ready", {"a": 1}, key="k1"), baggage={"trace_id": "t"})
        assert d.relay is not None
        self.assertEqual(d.relay.payload, {"a": 1})
        self.assertEqual(d.relay.dedupe_key, "k1")
        self.assertEqual(d.relay.baggage, {})

    def test_null_dedupe_key_means_none(self) -> None:
        r = router(self.TEXT)
        (d,) = r.route_root(event("backup.ready", {"archive_id": None}, key="k1"), baggage={"trace_id": "t"})
        assert d.relay is not None
        self.assertIsNone(d.relay.dedupe_key)

    def test_template_dedupe_key(self) -> None:
        r = router("""
pipelines:
  - name: send
    on: backup.ready
    steps:
      - relay: {to: lab, event: backup.ready, dedupe_key: "backup.ready:{payload.archive_id}"}
""")
        (d,) = r.route_root(event("backup.ready", {"archive_id": "n1"}))
        assert d.relay is not None
        self.assertEqual(d.relay.dedupe_key, "backup.ready:n1")

    def test_missing_path_fails_job(self) -> None:
        r = router(self.TEXT)
        (d,) = r.route_root(event("backup.ready", {"archive_id": "n1"}))
        self.assertIsNone(d.relay)
        self.assertEqual(
            d.error,
            "pipeline \"send\" step \"relay-to-lab\": relay: relay.baggage.trace_id: path 'context.trace_id' not found",
        )
