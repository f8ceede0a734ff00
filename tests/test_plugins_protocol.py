"""
The protocol-2 request and response (contract §2.4, §2.5).
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ductile.events import Event
from ductile.plugins.protocol import (
    PluginResponse,
    ProtocolError,
    build_request,
    encode_request,
    normalize_events,
    parse_response,
)
from ductile.timestamps import format_rfc3339nano

NOW = 1_767_000_000.25


def request(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        job_id="job-1",
        command="poll",
        config={"url": "u"},
        state={"cursor": 3},
        payload={"since": 1},
        context={"ductile_plugin": "demo"},
        deadline_at="2026-01-01T00:01:00Z",
    )
    args.update(changes)
    return build_request(**args)


class RequestTests(SynchronousTestCase):
    def test_shape_and_order(self) -> None:
        req = request(secrets={"token": "s3cret"})
        self.assertEqual(
            list(req),
            ["protocol", "job_id", "command", "config", "secrets", "state", "payload",
             "context", "deadline_at"],
        )
        self.assertEqual(req["protocol"], 2)
        self.assertEqual(req["job_id"], "job-1")
        self.assertEqual(req["command"], "poll")
        self.assertEqual(req["config"], {"url": "u"})
        self.assertEqual(req["secrets"], {"token": "s3cret"})
        self.assertEqual(req["state"], {"cursor": 3})
        self.assertEqual(req["payload"], {"since": 1})
        self.assertEqual(req["context"], {"ductile_plugin": "demo"})
        self.assertEqual(req["deadline_at"], "2026-01-01T00:01:00Z")
        self.assertNotIn("event", req)

    def test_empty_parts(self) -> None:
        """No secrets and no payload: omitted; no config/state: empty objects."""
        req = request(config=None, state=None, payload={}, secrets={})
        self.assertNotIn("secrets", req)
        self.assertNotIn("payload", req)
        self.assertEqual(req["config"], {})
        self.assertEqual(req["state"], {})
        self.assertNotIn("payload", request(payload=None))

    def test_handle_carries_event(self) -> None:
        event = Event.create("x.y", {"a": 1}, "src", NOW, dedupe_key="k")
        req = request(command="handle", event=event)
        self.assertEqual(req["event"], event.to_json())
        self.assertEqual(list(req)[-2:], ["event", "deadline_at"])
        raw = {"type": "x.y", "payload": {}}
        self.assertEqual(request(command="handle", event=raw)["event"], raw)

    def test_event_only_for_handle(self) -> None:
        e = self.assertRaises(ValueError, request, command="poll", event={"type": "x"})
        self.assertIn("only sent with the handle command, not 'poll'", str(e))

    def test_does_not_alias_inputs(self) -> None:
        config = {"a": 1}
        req = request(config=config)
        req["config"]["a"] = 2
        self.assertEqual(config, {"a": 1})

    def test_encode(self) -> None:
        data = encode_request(request(payload={"text": "é"}))
        self.assertTrue(data.endswith(b"}\n"))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(json.loads(data)["payload"], {"text": "é"})


class ResponseTests(SynchronousTestCase):
    def parse(self, obj: Any) -> PluginResponse:
        return parse_response(json.dumps(obj).encode())

    def rejects(self, data: Any, fragment: str) -> None:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        e = self.assertRaises(ProtocolError, parse_response, raw)
        self.assertIn(fragment, str(e))

    def test_ok(self) -> None:
        resp = self.parse({
            "status": "ok", "result": "done",
            "events": [{"type": "a.b", "payload": {"x": 1}}],
            "state_updates": {"k": "v"},
            "logs": [{"level": "info", "message": "m"}],
            "ductile_stopwatch_subs": [{"ignored": True}],
        })
        self.assertEqual(resp, PluginResponse(
            status="ok", result="done", events=({"type": "a.b", "payload": {"x": 1}},),
            state_updates={"k": "v"}, logs=({"level": "info", "message": "m"},),
        ))
        self.assertTrue(resp.ok)
        self.assertTrue(resp.retry)

    def test_ok_with_non_string_result_kept(self) -> None:
        self.assertEqual(self.parse({"status": "ok", "result": {"n": 1}}).result, {"n": 1})
        self.assertEqual(self.parse({"status": "ok", "result": 0}).result, 0)

    def test_surrounding_whitespace_allowed(self) -> None:
        resp = parse_response(b'\n  {"status":"ok","result":"r"}\n\n')
        self.assertEqual(resp.result, "r")

    def test_error(self) -> None:
        resp = self.parse({"status": "error", "error": "boom"})
        self.assertEqual((resp.status, resp.error, resp.retry), ("error", "boom", True))
        self.assertFalse(resp.ok)

    def test_retry_false_only_with_error(self) -> None:
        self.assertFalse(self.parse({"status": "error", "error": "e", "retry": False}).retry)
        self.assertTrue(self.parse({"status": "error", "error": "e", "retry": True}).retry)
        self.assertTrue(self.parse({"status": "ok", "result": "r", "retry": False}).retry)

    def test_empty(self) -> None:
        self.rejects(b"", "plugin produced no output on stdout")
        self.rejects(b"  \n", "plugin produced no output on stdout")

    def test_not_json(self) -> None:
        self.rejects(b"hello", "plugin output is not valid JSON")
        self.rejects(b'{"status":"ok","result":"r"} trailing', "plugin output is not valid JSON")
        self.rejects(b'{"status":"ok","result":NaN}', "plugin output is not valid JSON")
        self.rejects(b"\xff\xfe", "plugin output is not valid JSON")

    def test_not_object(self) -> None:
        self.rejects([1], "plugin output is not a JSON object (got list)")

    def test_status(self) -> None:
        self.rejects({"result": "r"}, "response missing required field: status")
        self.rejects({"status": "", "result": "r"}, "response missing required field: status")
        self.rejects({"status": "OK", "result": "r"}, "invalid status value: 'OK' (must be 'ok' or 'error')")

    def test_error_needs_message(self) -> None:
        self.rejects({"status": "error"}, "response has status=error but no error message")
        self.rejects({"status": "error", "error": ""}, "status=error but no error message")
        self.rejects({"status": "error", "error": 5}, "response field error must be a string, got a number")

    def test_ok_needs_result(self) -> None:
        self.rejects({"status": "ok"}, "response has status=ok but no result message")
        self.rejects({"status": "ok", "result": "  "}, "status=ok but no result message")
        self.rejects({"status": "ok", "result": None}, "status=ok but no result message")

    def test_field_types(self) -> None:
        ok = {"status": "ok", "result": "r"}
        self.rejects({**ok, "retry": "no"}, "response field retry must be true or false, got a string")
        self.rejects({**ok, "state_updates": [1]}, "response field state_updates must be an object, got a list")
        self.rejects({**ok, "events": {}}, "response field events must be a list, got an object")
        self.rejects({**ok, "logs": "x"}, "response field logs must be a list")
        self.rejects({**ok, "logs": [{"level": 1}]}, "logs[0].level must be a string")

    def test_event_shapes(self) -> None:
        ok = {"status": "ok", "result": "r"}
        self.rejects({**ok, "events": ["x"]}, "events[0] must be an object, got a string")
        self.rejects({**ok, "events": [{"payload": {}}]}, "events[0] has no type")
        self.rejects({**ok, "events": [{"type": 3}]}, "events[0] has no type")
        self.rejects({**ok, "events": [{"type": "a"}, {"type": ""}]}, "events[1] has no type")
        self.rejects({**ok, "events": [{"type": "a", "payload": [1]}]}, "events[0].payload must be an object")
        self.rejects({**ok, "events": [{"type": "a", "dedupe_key": 1}]}, "events[0].dedupe_key must be a string")
        self.rejects(
            {**ok, "events": [{"type": "a", "timestamp": "yesterday"}]},
            "events[0].timestamp is not an RFC 3339 timestamp: 'yesterday'",
        )


class NormalizeEventsTests(SynchronousTestCase):
    def test_fills_in(self) -> None:
        resp = PluginResponse(status="ok", result="done", events=({"type": "a.b", "payload": {"x": 1}},))
        [event] = normalize_events(resp, "demo", NOW)
        self.assertEqual(event.type, "a.b")
        self.assertEqual(event.payload, {"x": 1, "result": "done"})
        self.assertEqual(event.source, "demo")
        self.assertEqual(event.timestamp, format_rfc3339nano(NOW))
        self.assertEqual(str(uuid.UUID(event.event_id)), event.event_id)
        self.assertIsNone(event.dedupe_key)

    def test_keeps_what_plugin_set(self) -> None:
        raw = {
            "type": "a.b", "payload": {"result": "mine"}, "dedupe_key": "k",
            "source": "other", "event_id": "e-1", "timestamp": "2026-01-02T03:04:05Z",
        }
        [event] = normalize_events(PluginResponse(status="ok", result="done", events=(raw,)), "demo", NOW)
        self.assertEqual(
            event,
            Event(type="a.b", payload={"result": "mine"}, source="other",
                  timestamp="2026-01-02T03:04:05Z", event_id="e-1", dedupe_key="k"),
        )
        # The response's raw event is not modified.
        self.assertEqual(raw["payload"], {"result": "mine"})

    def test_no_result_no_copy(self) -> None:
        resp = PluginResponse(status="error", error="e", events=({"type": "a"},))
        [event] = normalize_events(resp, "demo", NOW)
        self.assertEqual(event.payload, {})

    def test_structured_result_copied(self) -> None:
        resp = PluginResponse(status="ok", result={"n": 1}, events=({"type": "a"},))
        self.assertEqual(normalize_events(resp, "demo", NOW)[0].payload, {"result": {"n": 1}})

    def test_distinct_ids(self) -> None:
        resp = PluginResponse(status="ok", result="r", events=({"type": "a"}, {"type": "a"}))
        first, second = normalize_events(resp, "demo", NOW)
        self.assertNotEqual(first.event_id, second.event_id)

    def test_rejects_untyped(self) -> None:
        resp = PluginResponse(status="ok", result="r", events=({"type": "a"}, {"payload": {}}))
        e = self.assertRaises(ProtocolError, normalize_events, resp, "demo", NOW)
        self.assertIn("events[1] has no type", str(e))
