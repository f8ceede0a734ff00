"""
Tests for L{ductile.pipelines.compiler}: structure and every load-time error.
"""
from __future__ import annotations

from typing import Any, Collection

import yaml
from twisted.trial.unittest import SynchronousTestCase

from ductile.config.models import PipelineSource
from ductile.pipelines.compiler import PipelineError, Pipelines, compile_pipelines

PLUGINS = frozenset({"a", "b", "c", "d", "e", "fetch", "backup-verifier", "cold-storage-sync", "emitter"})


def sources(text: str, file: str = "pipelines.yaml") -> list[PipelineSource]:
    doc = yaml.safe_load(text)
    return [PipelineSource(spec=s, file=file, index=i) for i, s in enumerate(doc["pipelines"])]


def compile_yaml(text: str, plugins: Collection[str] = PLUGINS, instances: Collection[str] = ()) -> Pipelines:
    return compile_pipelines(sources(text), plugins, instances)


class StructureTests(SynchronousTestCase):
    def test_empty(self) -> None:
        ps = compile_pipelines([], PLUGINS)
        self.assertEqual((dict(ps.by_name), dict(ps.by_trigger)), ({}, {}))

    def test_quoted_on_key(self) -> None:
        # PyYAML reads a bare on: as True; a quoted "on": is the string key.
        ps = compile_yaml("""
pipelines:
  - name: q
    "on": x.y
    steps: [{uses: a}]
""")
        self.assertEqual(ps.by_trigger["x.y"], ("q",))

    def test_sequence(self) -> None:
        p = compile_yaml("""
pipelines:
  - name: seq
    on: x.y
    steps:
      - id: one
        uses: a
      - uses: b
      - uses: c
""").by_name["seq"]
        self.assertEqual(p.on, "x.y")
        self.assertEqual(p.entry, ("one",))
        self.assertEqual(p.nodes["one"].next, ("step_1",))
        self.assertEqual(p.nodes["step_1"].plugin, "b")
        self.assertEqual(p.nodes["step_1"].next, ("step_2",))
        self.assertEqual(p.nodes["step_2"].next, ())
        self.assertEqual(p.max_depth, 3)

    def test_split_branches_each_continue(self) -> None:
        p = compile_yaml("""
pipelines:
  - name: sp
    on: x.y
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
      - id: last
        uses: e
""").by_name["sp"]
        self.assertEqual(p.nodes["first"].next, ("left", "r1"))
        self.assertEqual(p.nodes["left"].next, ("last",))
        self.assertEqual(p.nodes["r1"].next, ("r2",))
        self.assertEqual(p.nodes["r2"].next, ("last",))
        self.assertEqual(p.max_depth, 4)

    def test_call_is_inlined_with_prefixed_ids(self) -> None:
        ps = compile_yaml("""
pipelines:
  - name: caller
    on: x.y
    steps:
      - id: pre
        uses: a
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
        p = ps.by_name["caller"]
        self.assertEqual(p.nodes["pre"].next, ("sub/c1",))
        self.assertEqual(p.nodes["sub/c1"].next, ("sub/c2",))
        self.assertEqual(p.nodes["sub/c2"].next, ("post",))
        self.assertEqual(p.max_depth, 4)
        self.assertEqual(ps.by_name["callee"].max_depth, 2)

    def test_author_max_depth(self) -> None:
        ps = compile_yaml("""
pipelines:
  - name: p
    on: x.y
    max_depth: 0
    steps: [{uses: a}, {uses: b}]
  - name: q
    on: x.y
    max_depth: 7
    steps: [{uses: a}]
""")
        self.assertEqual(ps.by_name["p"].max_depth, 0)
        self.assertEqual(ps.by_name["q"].max_depth, 7)
        self.assertEqual(ps.by_trigger["x.y"], ("p", "q"))

    def test_relay_step(self) -> None:
        p = compile_yaml("""
pipelines:
  - name: out
    on: backup.ready
    steps:
      - id: relay-to-lab
        relay:
          to: lab
          event: backup.ready
          dedupe_key: payload.archive_id
          with:
            archive_id: payload.archive_id
          baggage:
            trace_id: context.trace_id
""", instances={"lab"}).by_name["out"]
        node = p.nodes["relay-to-lab"]
        self.assertEqual((node.kind, node.plugin), ("relay", "core.relay"))
        assert node.relay is not None
        self.assertEqual(node.relay.to, "lab")
        self.assertEqual(node.relay.dedupe_key, "payload.archive_id")


class ErrorTests(SynchronousTestCase):
    def problems(self, text: str, plugins: Collection[str] = PLUGINS, instances: Collection[str] = ()) -> list[str]:
        e = self.assertRaises(PipelineError, compile_yaml, text, plugins, instances)
        self.assertEqual(str(e), "\n".join(e.problems))
        return list(e.problems)

    def test_seed_typo_names_file_pipeline_step(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: process-offsite-backup
    on: backup.ready
    steps:
      - id: verify-backup
        uses: backup-verifer
      - id: store-backup
        uses: cold-storage-sync
"""), ['pipelines.yaml: pipeline "process-offsite-backup" step "verify-backup": unknown plugin "backup-verifer"'])

    def test_all_problems_listed(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: p
    on: x.y
    steps:
      - uses: nope
      - id: dup
        uses: a
      - id: dup
        uses: b
  - name: p
    on: x.y
    steps: [{uses: a}]
  - on: x.y
    steps: [{uses: a}]
"""), [
            'pipelines.yaml: pipeline "p": duplicate pipeline name (first defined in pipelines.yaml pipelines[0])',
            "pipelines.yaml: pipelines[2]: name is required",
            'pipelines.yaml: pipeline "p" step "steps[0]": unknown plugin "nope"',
            'pipelines.yaml: pipeline "p" step "dup": duplicate step id "dup"',
        ])

    def test_step_shape(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: p
    on: x.y
    steps:
      - id: both
        uses: a
        call: q
      - id: neither
        with: {x: payload.x}
      - id: withcall
        call: q
        with: {x: payload.x}
      - id: bagsplit
        split: [{uses: a}]
        baggage: {x: payload.x}
  - name: q
    on: q.q
    steps: [{uses: a}]
"""), [
            'pipelines.yaml: pipeline "p" step "both": step must define exactly one of uses, call, steps, '
            "split, relay (found: uses, call)",
            'pipelines.yaml: pipeline "p" step "neither": step must define exactly one of uses, call, steps, '
            "split, relay (found: none)",
            'pipelines.yaml: pipeline "p" step "withcall": with is only supported on uses steps',
            'pipelines.yaml: pipeline "p" step "bagsplit": baggage is only supported on uses steps',
        ])

    def test_pipeline_level(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: noon
    steps: [{uses: a}]
  - name: neg
    on: x.y
    max_depth: -1
    steps: [{uses: a}]
  - name: nosteps
    on: x.y
  - name: badfrom
    on: x.y
    from_plugin: ghost
    steps: [{uses: a}]
  - name: badif
    on: x.y
    if: {path: config.mode, op: eq, value: 1}
    steps: [{uses: a}]
  - name: both
    on: x.y
    on-hook: job.failed
    steps: [{uses: a}]
"""), [
            'pipelines.yaml: pipeline "noon": on (or on-hook) is required',
            'pipelines.yaml: pipeline "neg": max_depth must be an integer >= 0 (0 means unlimited), got -1',
            'pipelines.yaml: pipeline "nosteps": steps must be a non-empty list',
            'pipelines.yaml: pipeline "badfrom": from_plugin names unknown plugin "ghost"',
            "pipelines.yaml: pipeline \"badif\": if: path 'config.mode' may not use root 'config' here "
            "(expected payload.<key> / context.<key>)",
            'pipelines.yaml: pipeline "both": on and on-hook are mutually exclusive',
        ])

    def test_calls(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: p1
    on: x.y
    steps:
      - id: go
        call: p2
  - name: p2
    on: x.z
    steps:
      - id: back
        call: p1
  - name: p3
    on: x.y
    steps:
      - id: dangling
        call: nowhere
"""), [
            'pipelines.yaml: pipeline "p1" step "go/back": pipeline call cycle: p1 -> p2 -> p1',
            'pipelines.yaml: pipeline "p2" step "back/go": pipeline call cycle: p2 -> p1 -> p2',
            'pipelines.yaml: pipeline "p3" step "dangling": call to unknown pipeline "nowhere"',
        ])

    def test_self_call(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: me
    on: x.y
    steps:
      - uses: a
      - id: again
        call: me
"""), ['pipelines.yaml: pipeline "me" step "again": pipeline call cycle: me -> me'])

    def test_invalid_if_on_step(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: p
    on: x.y
    steps:
      - id: filt
        uses: a
        if: {path: payload.x, op: regex, value: "("}
      - id: nested
        steps:
          - id: inner
            uses: b
            if: {any: [{path: payload.x, op: between, value: 1}]}
"""), [
            "pipelines.yaml: pipeline \"p\" step \"filt\": if: invalid regex '(': missing ), "
            "unterminated subpattern at position 0",
            "pipelines.yaml: pipeline \"p\" step \"inner\": if.any[0]: unknown op 'between' (expected one of "
            "exists, eq, neq, in, gt, gte, lt, lte, contains, startswith, endswith, regex)",
        ])

    def test_with_and_baggage_expressions(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: p
    on: x.y
    steps:
      - id: s
        uses: a
        with: {url: "{payload.link", other: "{body.x}"}
        baggage:
          "9bad": payload.x
          ok: notapath
      - id: bulk
        uses: b
        baggage: {from: payload.meta}
      - id: bulk2
        uses: c
        baggage: {from: context.meta, namespace: m}
"""), [
            "pipelines.yaml: pipeline \"p\" step \"s\": with.url: template '{payload.link' has unbalanced braces",
            "pipelines.yaml: pipeline \"p\" step \"s\": with.other: template '{body.x}': invalid path 'body.x' "
            "(expected payload.<key> / context.<key> / config.<key>)",
            "pipelines.yaml: pipeline \"p\" step \"s\": baggage: invalid baggage key '9bad': segment '9bad' must "
            "use letters, digits or underscore and not start with a digit",
            "pipelines.yaml: pipeline \"p\" step \"s\": baggage.ok: invalid path 'notapath' (expected "
            "payload.<key> / context.<key> / config.<key>)",
            'pipelines.yaml: pipeline "p" step "bulk": baggage.from needs a namespace',
            "pipelines.yaml: pipeline \"p\" step \"bulk2\": baggage.from 'context.meta' must reference payload "
            "or payload.<path>",
        ])

    def test_relay_errors(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: r
    on: x.y
    steps:
      - id: to-nowhere
        relay: {to: mars, event: backup.ready}
      - id: bad-type
        relay: {to: lab, event: backup_ready}
      - id: missing
        relay: {dedupe_key: "{payload.x"}
""", instances={"lab"}), [
            'pipelines.yaml: pipeline "r" step "to-nowhere": relay to unknown instance "mars"',
            "pipelines.yaml: pipeline \"r\" step \"bad-type\": relay.event 'backup_ready' is not a valid relay "
            "event type (lower-case dotted or hyphenated, no underscores)",
            'pipelines.yaml: pipeline "r" step "missing": relay.to is required',
            'pipelines.yaml: pipeline "r" step "missing": relay.event is required',
            "pipelines.yaml: pipeline \"r\" step \"missing\": relay.dedupe_key: template '{payload.x' has "
            "unbalanced braces",
        ])

    def test_relay_instance_unchecked_without_names(self) -> None:
        compile_yaml("""
pipelines:
  - name: r
    on: x.y
    steps:
      - relay: {to: anywhere, event: backup.ready}
""")

    def test_problems_in_called_pipeline_reported_once(self) -> None:
        self.assertEqual(self.problems("""
pipelines:
  - name: caller
    on: x.y
    steps:
      - call: callee
  - name: callee
    on: y.z
    steps:
      - id: broken
        uses: ghost
"""), ['pipelines.yaml: pipeline "callee" step "broken": unknown plugin "ghost"'])
