"""
C{ductile relay send} and C{ductile relay check} (contract §1.13; issue 6).

Each verb is a function C{run_*(args, config, reactor, ...) -> Deferred[int]}
that tests drive with a built L{Config}; the argparse C{handler} only loads
the config and runs the reactor.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any, Callable, Mapping, TextIO

from twisted.internet import defer, task

from ductile.config.models import Config, RelayRetry
from ductile.events import new_id
from ductile.relay.envelope import Envelope, Origin
from ductile.relay.outcome import next_delay
from ductile.relay.sender import RelaySender

#: Short CLI backoff: 1 s, 2 s, 4 s ... capped at 5 s (Retry-After too).
CLI_RETRY = RelayRetry(max_attempts=3, backoff_base=1.0, max_backoff=5.0)
#: No attempt starts later than this after the first one.
CLI_RETRY_BUDGET = 60.0


class UsageError(Exception):
    """A bad flag value; the message names the flag."""


def register(subparsers: Any) -> None:
    relay = subparsers.add_parser(
        "relay", help="send events to other ductile instances, check relay links"
    )
    verbs = relay.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    send = verbs.add_parser(
        "send",
        help="relay one event to a named instance",
        description="Sign and POST one event to instances[].name; exit 0 once the receiver accepts it.",
    )
    send.add_argument("instance", help="instances[].name to relay to")
    send.add_argument("--event", required=True, metavar="TYPE", help="event type, e.g. backup.ready")
    send.add_argument("--payload", metavar="JSON", help="event payload (a JSON object)")
    send.add_argument("--payload-file", metavar="PATH", help="read the payload JSON object from PATH")
    send.add_argument("--baggage", metavar="JSON", help="baggage (a JSON object)")
    send.add_argument("--baggage-file", metavar="PATH", help="read the baggage JSON object from PATH")
    send.add_argument("--dedupe-key", default="", metavar="KEY")
    send.add_argument("--origin-plugin", default="", metavar="NAME")
    send.add_argument("--origin-job-id", default="", metavar="ID")
    send.add_argument("--origin-event-id", default="", metavar="ID")
    send.add_argument(
        "--queue",
        action="store_true",
        help="hand the event to the local instance (its API) for durable delivery with retries, "
        "instead of sending it from this process",
    )
    send.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="retry transient failures up to N times (default 2)",
    )
    send.add_argument("--config", metavar="PATH", help="config file or directory")
    send.add_argument("--json", action="store_true", help="print the receiver's acceptance as JSON")
    send.set_defaults(handler=send_handler)

    check = verbs.add_parser(
        "check",
        help="diagnose the relay link to a named instance",
        description=(
            "Send a signed probe with no event type (nothing is enqueued on the receiver) and "
            "report each item of the relay checklist as ok, problem or unknown."
        ),
    )
    check.add_argument("instance", help="instances[].name to check")
    check.add_argument("--config", metavar="PATH", help="config file or directory")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=check_handler)

    from ductile.cli.deliveries import register_verbs

    register_verbs(verbs)


# -- argument values ---------------------------------------------------------


def _json_object(inline: str | None, path: str | None, flag: str) -> Mapping[str, Any]:
    """
    The JSON object given inline (C{--flag}) or in a file (C{--flag-file}).

    An absent or empty value is C{{}}.
    @raise UsageError: both forms given, unreadable file, bad JSON, not an object.
    """
    if inline is not None and path is not None:
        raise UsageError(f"use either --{flag} or --{flag}-file, not both")
    source = f"--{flag}"
    text = inline
    if path is not None:
        source = f"--{flag}-file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"{source}: cannot read: {e.strerror or e}") from None
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{source}: must be a JSON object, got {type(value).__name__ if value is not None else 'null'}"
        )
    return value


def build_envelope(args: argparse.Namespace) -> Envelope:
    """
    The envelope C{relay send} delivers; C{origin.instance} is left to the
    sender.  Without C{--origin-event-id} a fresh event id is minted once,
    so the receiver derives a dedupe key from it: this command's own retries
    — and anyone replaying a captured request — cannot create a second job.
    """
    event = (args.event or "").strip()
    if not event:
        raise UsageError("--event must not be empty")
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    return Envelope(
        event_type=event,
        payload=_json_object(args.payload, args.payload_file, "payload"),
        dedupe_key=args.dedupe_key or "",
        origin=Origin(
            plugin=args.origin_plugin or "",
            job_id=args.origin_job_id or "",
            event_id=args.origin_event_id or new_id(),
        ),
        baggage=_json_object(args.baggage, args.baggage_file, "baggage"),
    )


# -- relay send ---------------------------------------------------------------


def run_send(
    args: argparse.Namespace,
    config: Config,
    reactor: Any,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    retry: RelayRetry = CLI_RETRY,
    budget: float = CLI_RETRY_BUDGET,
    rng: Callable[[], float] = random.random,
) -> defer.Deferred[int]:
    """Relay one event; fire with the exit code (0 accepted, 1 otherwise)."""
    return defer.ensureDeferred(
        _send(args, config, reactor, out or sys.stdout, err or sys.stderr, retry, budget, rng)
    )


async def _send(
    args: argparse.Namespace,
    config: Config,
    reactor: Any,
    out: TextIO,
    err: TextIO,
    retry: RelayRetry,
    budget: float,
    rng: Callable[[], float],
) -> int:
    try:
        envelope = build_envelope(args)
    except UsageError as e:
        print(f"ductile relay send: {e}", file=err)
        return 1
    name = args.instance.strip()
    sender = RelaySender(reactor, config.service.name, config.instances)
    try:
        started = reactor.seconds()
        attempts = 1 + args.retries
        n = 0
        while True:
            n += 1
            outcome = await sender.attempt(name, envelope)
            if outcome.accepted:
                acceptance = dict(outcome.acceptance or {})
                if args.json:
                    print(json.dumps(acceptance, indent=2), file=out)
                else:
                    print(f"Relayed {envelope.event_type} to {name}", file=out)
                    print(f"Receiver event id: {acceptance.get('receiver_event_id', '')}", file=out)
                    if acceptance.get("job_id"):
                        print(f"Receiver job id: {acceptance['job_id']}", file=out)
                return 0
            if not outcome.retryable:
                print(f"ductile relay send: {outcome.error}", file=err)
                return 1
            delay = next_delay(n, retry, rng, outcome.retry_after)
            if n >= attempts:
                print(f"attempt {n} failed (retryable): {outcome.error}", file=err)
                print(f"ductile relay send: giving up after {n} attempt(s): {outcome.error}", file=err)
                return 1
            if reactor.seconds() + delay - started > budget:
                print(f"attempt {n} failed (retryable): {outcome.error}", file=err)
                print(
                    f"ductile relay send: giving up: next attempt would start after the "
                    f"{budget:g}s budget: {outcome.error}",
                    file=err,
                )
                return 1
            print(
                f"attempt {n} failed (retryable): {outcome.error}; retrying in {delay:.1f}s",
                file=err,
            )
            await task.deferLater(reactor, delay, lambda: None)
    finally:
        await sender.close()


# -- relay check --------------------------------------------------------------


def run_check(
    args: argparse.Namespace,
    config: Config,
    reactor: Any,
    *,
    out: TextIO | None = None,
) -> defer.Deferred[int]:
    """Diagnose one relay link; fire with 0 when no item is a problem, else 1."""
    return defer.ensureDeferred(_check(args, config, reactor, out or sys.stdout))


async def _check(args: argparse.Namespace, config: Config, reactor: Any, out: TextIO) -> int:
    sender = RelaySender(reactor, config.service.name, config.instances)
    try:
        report = await sender.check(args.instance)
    finally:
        await sender.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(f"relay check {report.instance} (as {config.service.name}):", file=out)
        for line in report.lines():
            print(line, file=out)
    return 0 if report.ok else 1


# -- argparse handlers --------------------------------------------------------


def _run(args: argparse.Namespace, verb: str, runner: Callable[..., defer.Deferred[int]]) -> int:
    from ductile.config import ConfigError, load_config  # written by the config helper

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"ductile relay {verb}: {e}", file=sys.stderr)
        return 1
    codes: list[int] = []

    def main(reactor: Any) -> defer.Deferred[None]:
        return runner(args, config, reactor).addCallback(codes.append)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return codes[0] if codes else 1


def send_handler(args: argparse.Namespace) -> int:
    if getattr(args, "queue", False):
        return queue_send(args)
    return _run(args, "send", run_send)


def queue_send(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """
    C{relay send --queue}: POST the envelope to the local instance's
    C{/relay/<instance>}; it commits a delivery job and retries it durably.
    """
    from ductile import jobview
    from ductile.cli.deliveries import ApiUnreachable, api_base_url, post_json, replay_token
    from ductile.config import ConfigError, load_config

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = load_config(args.config)
        envelope = build_envelope(args)
    except (ConfigError, UsageError) as e:
        print(f"ductile relay send: {e}", file=err)
        return 1
    token = replay_token(config)
    if not config.api.enabled or token is None:
        print("ductile relay send: --queue needs the local API enabled and a token with relay:rw "
              "(api.auth.tokens or a tokens.yaml entry with scopes)", file=err)
        return 1
    base = api_base_url(config.api.listen)
    name = args.instance.strip()
    try:
        status, body = post_json(base, token, f"/relay/{name}", envelope.to_bytes(),
                                 "check `ductile relay deliveries` before sending again")
    except ApiUnreachable as e:
        print(f"ductile relay send: the local instance is not reachable at {base} ({e}); "
              "start it, or send without --queue", file=err)
        return 1
    except jobview.InspectError as e:
        print(f"ductile relay send: {e}", file=err)
        return 1
    if status != 202:
        print(f"ductile relay send: the local instance refused the event ({status}): "
              f"{body.get('error', body)}", file=err)
        return 1
    if args.json:
        print(json.dumps(body, indent=2), file=out)
    else:
        print(f"Queued {envelope.event_type} for {name} as delivery {body['job_id']}", file=out)
        print("Follow it with: ductile relay deliveries", file=out)
    return 0


def check_handler(args: argparse.Namespace) -> int:
    return _run(args, "check", run_check)
