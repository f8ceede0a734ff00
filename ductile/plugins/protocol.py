"""
Plugin protocol 2: the request written to a plugin's stdin and the response
read from its stdout (contract §2.4, §2.5).

The shapes match Go ductile so plugins written for it run unchanged. Requests
may carry secrets, so nothing here logs, and L{ProtocolError} messages never
quote the request.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import attrs

from ductile.events import Event, new_id
from ductile.timestamps import format_rfc3339nano, parse_rfc3339

PROTOCOL_VERSION = 2


class ProtocolError(ValueError):
    """A plugin's stdout is not a valid protocol-2 response (retryable)."""


def build_request(
    *,
    job_id: str,
    command: str,
    config: Mapping[str, Any] | None,
    state: Mapping[str, Any] | None,
    payload: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    event: Mapping[str, Any] | Event | None = None,
    deadline_at: str,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """
    The request object for one job, in Go's field order.

    C{secrets} and C{payload} are omitted when empty; C{config}, C{state} and
    C{context} are always present (as C{{}} when empty). C{event} is only
    sent with the C{handle} command.

    @param context: should hold C{ductile_plugin} plus baggage and the
        C{ductile_*} pipeline fields (contract §2.4).
    @param deadline_at: RFC 3339 text, now + timeout (informational).
    @raise ValueError: an C{event} for a command other than C{handle}.
    """
    if event is not None and command != "handle":
        raise ValueError(f"an event is only sent with the handle command, not {command!r}")
    request: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "command": command,
        "config": dict(config or {}),
    }
    if secrets:
        request["secrets"] = dict(secrets)
    request["state"] = dict(state or {})
    if payload:
        request["payload"] = dict(payload)
    request["context"] = dict(context or {})
    if event is not None:
        request["event"] = event.to_json() if isinstance(event, Event) else dict(event)
    request["deadline_at"] = deadline_at
    return request


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The bytes written to stdin: compact JSON and a newline."""
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


@attrs.frozen
class PluginResponse:
    """
    A validated response.

    @ivar result: whatever the plugin put in C{result}: Go plugins send a
        string; any non-null JSON value is kept as is.
    @ivar retry: C{False} only when the plugin said C{retry: false} with
        C{status: error}; the flag means nothing on success.
    @ivar events: the raw event objects, checked for shape; see
        L{normalize_events}.
    @ivar state_updates: an object to merge into the plugin state, or C{None}.
    @ivar logs: C{{"level", "message"}} objects for the core to log.
    """

    status: str
    result: Any = ""
    error: str = ""
    retry: bool = True
    events: tuple[Mapping[str, Any], ...] = ()
    state_updates: Mapping[str, Any] | None = None
    logs: tuple[Mapping[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_response(stdout: bytes) -> PluginResponse:
    """
    Decode and validate a plugin's whole stdout.

    @raise ProtocolError: empty output, not one JSON object, or a field that
        breaks contract §2.5; the message says which.
    """
    if not stdout.strip():
        raise ProtocolError("plugin produced no output on stdout")
    try:
        data = json.loads(stdout, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"plugin output is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"plugin output is not a JSON object (got {type(data).__name__})"
        )

    status = data.get("status")
    if status is None or status == "":
        raise ProtocolError("response missing required field: status")
    if status not in ("ok", "error"):
        raise ProtocolError(f"invalid status value: {status!r} (must be 'ok' or 'error')")

    error = data.get("error")
    if error is None:
        error = ""
    if not isinstance(error, str):
        raise ProtocolError(f"response field error must be a string, got {_kind(error)}")
    if status == "error" and not error:
        raise ProtocolError("response has status=error but no error message")

    result = data.get("result")
    if result is None:
        result = ""
    if status == "ok" and isinstance(result, str) and not result.strip():
        raise ProtocolError("response has status=ok but no result message")

    retry = data.get("retry")
    if retry is not None and not isinstance(retry, bool):
        raise ProtocolError(f"response field retry must be true or false, got {_kind(retry)}")

    state_updates = data.get("state_updates")
    if state_updates is not None and not isinstance(state_updates, dict):
        raise ProtocolError(
            f"response field state_updates must be an object, got {_kind(state_updates)}"
        )

    return PluginResponse(
        status=status,
        result=result,
        error=error,
        retry=not (status == "error" and retry is False),
        events=_events(data.get("events")),
        state_updates=state_updates,
        logs=_logs(data.get("logs")),
    )


def _events(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(f"response field events must be a list, got {_kind(raw)}")
    out = []
    for i, event in enumerate(raw):
        _check_event(event, i)
        out.append(event)
    return tuple(out)


def _check_event(event: Any, i: int) -> None:
    where = f"events[{i}]"
    if not isinstance(event, Mapping):
        raise ProtocolError(f"{where} must be an object, got {_kind(event)}")
    etype = event.get("type")
    if not isinstance(etype, str) or not etype.strip():
        raise ProtocolError(f"{where} has no type (a non-empty string is required)")
    payload = event.get("payload")
    if payload is not None and not isinstance(payload, Mapping):
        raise ProtocolError(f"{where}.payload must be an object, got {_kind(payload)}")
    for key in ("dedupe_key", "source", "event_id"):
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"{where}.{key} must be a string, got {_kind(value)}")
    timestamp = event.get("timestamp")
    if timestamp is not None and timestamp != "":
        if not isinstance(timestamp, str):
            raise ProtocolError(f"{where}.timestamp must be a string, got {_kind(timestamp)}")
        try:
            parse_rfc3339(timestamp)
        except ValueError:
            raise ProtocolError(
                f"{where}.timestamp is not an RFC 3339 timestamp: {timestamp!r}"
            ) from None


def _logs(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProtocolError(f"response field logs must be a list, got {_kind(raw)}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ProtocolError(f"logs[{i}] must be an object, got {_kind(entry)}")
        for key in ("level", "message"):
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                raise ProtocolError(f"logs[{i}].{key} must be a string, got {_kind(value)}")
        out.append(entry)
    return tuple(out)


def _has_result(result: Any) -> bool:
    if isinstance(result, str):
        return bool(result)
    return result is not None


def normalize_events(response: PluginResponse, plugin_name: str, now: float) -> list[Event]:
    """
    The response's events as L{Event} values, with what the core fills in
    (contract §2.5): a fresh C{event_id}, C{timestamp} = C{now} and
    C{source} = the plugin's name where the plugin left them out, and the
    response's C{result} copied into C{payload.result} unless the payload
    already has that key.

    @raise ProtocolError: an event without a string type, or otherwise
        malformed (only possible for a hand-built L{PluginResponse}).
    """
    stamp = format_rfc3339nano(now)
    events = []
    for i, raw in enumerate(response.events):
        _check_event(raw, i)
        payload = dict(raw.get("payload") or {})
        if _has_result(response.result) and "result" not in payload:
            payload["result"] = response.result
        events.append(
            Event(
                type=raw["type"],
                payload=payload,
                source=raw.get("source") or plugin_name,
                timestamp=raw.get("timestamp") or stamp,
                event_id=raw.get("event_id") or new_id(),
                dedupe_key=raw.get("dedupe_key") or None,
            )
        )
    return events


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
