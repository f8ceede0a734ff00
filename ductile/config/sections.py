"""
Builders for the non-relay sections: service, api, state, plugin_roots,
plugins (with schedules), admin.manhole and pipelines.
"""
from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

from ductile.config.durations import EVERY_EXPECTED, parse_every
from ductile.cron import CronError, load_zone, parse_cron
from ductile.config.fields import At
from ductile.config.interpolate import unresolved_vars
from ductile.config.merge import Located
from ductile.config.models import (
    ApiConfig,
    ApiToken,
    ManholeConfig,
    MetricsConfig,
    PipelineSource,
    PluginConfig,
    RetryPolicy,
    Schedule,
    ServiceConfig,
    StateConfig,
    Token,
    default_max_workers,
)
from ductile.config.report import Report, Silent, show_value
from ductile.config.yamlsafe import plain, scalar_text
from ductile.events import INSTANCE_NAME
from ductile.timestamps import parse_rfc3339

LOG_LEVELS = ("debug", "info", "warn", "error")


def resolve_path(path: str, base_dir: str, home: str) -> str:
    """C{~} expanded with C{home}; relative paths joined to C{base_dir}."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.normpath(path)


def build_service(at: At) -> ServiceConfig:
    d = ServiceConfig(max_workers=default_max_workers())
    name = at.text("name", d.name) or d.name
    if not INSTANCE_NAME.match(name):
        at.warn("name", f'service name "{name}" should be lower-case hyphenated, e.g. home-primary')
    tick = at.duration("tick_interval", d.tick_interval)
    if tick < 0.1:
        at.invalid("tick_interval", at.raw("tick_interval"), "expected a duration of at least 100ms")
        tick = d.tick_interval
    if at.has("strict_mode"):
        at.warn("strict_mode", "is deprecated; it turns on strict config checking (use service.strict)")
    return ServiceConfig(
        name=name,
        tick_interval=tick,
        log_level=at.choice("log_level", d.log_level, LOG_LEVELS),
        log_format=at.text("log_format", d.log_format) or d.log_format,
        dedupe_ttl=at.duration("dedupe_ttl", d.dedupe_ttl, positive=True),
        max_workers=at.whole("max_workers", d.max_workers, minimum=1),
        job_log_retention=at.duration("job_log_retention", d.job_log_retention, positive=True),
        job_queue_retention=at.duration("job_queue_retention", d.job_queue_retention, positive=True),
        strict=at.flag("strict", False),
        allow_symlinks=at.flag("allow_symlinks", False),
        # Go reads 0 (or less) as "the default"; a negative value is refused here.
        hook_max_depth=at.whole("hook_max_depth", d.hook_max_depth, minimum=0) or d.hook_max_depth,
        plugin_env_passthrough=_env_names(at, "plugin_env_passthrough"),
    )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_names(at: At, key: str) -> tuple[str, ...]:
    """A list of environment variable names (each checked; duplicates dropped)."""
    raw = at.raw(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        at.invalid(key, raw, "expected a list of environment variable names, e.g. [AWS_PROFILE, HTTPS_PROXY]")
        return ()
    names: list[str] = []
    for i, item in enumerate(raw):
        name = item.strip() if isinstance(item, str) else item
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            at.invalid(f"{key}[{i}]", item, "expected an environment variable name (letters, digits, _)")
        elif name not in names:
            names.append(name)
    return tuple(names)


def strict_requested(service: At) -> bool:
    """C{service.strict}, Go's C{strict_mode} or C{admission.validate_config_on_boot}."""
    quiet = At(service.data, service.prefix, service.path, service.origin, Silent(""))
    admission = quiet.sub("admission")
    return (
        quiet.flag("strict", False)
        or quiet.flag("strict_mode", False)
        or admission.flag("validate_config_on_boot", False)
    )


def _check_listen(at: At, name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        at.invalid(name, value, "expected HOST:PORT, e.g. 127.0.0.1:8080")


def build_api(at: At, auth_items: list[Located], tokens: tuple[Token, ...], report: Report) -> ApiConfig:
    d = ApiConfig()
    enabled = at.flag("enabled", d.enabled)
    listen = at.text("listen", d.listen) or d.listen
    _check_listen(at, "listen", listen)
    creds: list[ApiToken] = []
    for item in auth_items:
        prefix = f"api.auth.tokens[{item.index}]"
        if not isinstance(item.value, dict):
            report.invalid(item.file, prefix, item.value, "expected a mapping with token and scopes")
            continue
        tat = At.in_file(item.value, prefix, item.file, report)
        raw = tat.raw("token")
        value = "" if raw is None or isinstance(raw, (dict, list)) else scalar_text(raw)
        scopes = tat.str_list("scopes")
        missing = unresolved_vars(value)
        if missing:
            if enabled:
                names = ", ".join("${%s}" % m for m in missing)
                tat.error("token", f"uses the unset environment variable {names}")
            continue
        if not value.strip():
            if enabled:
                tat.error("token", "is required and must not be empty")
            continue
        creds.append(ApiToken(token=value, scopes=scopes, label=prefix))
    # tokens.yaml entries with scopes are API credentials too (they carry
    # the scopes file that says what they may do).
    for token in tokens:
        if not token.scopes:
            continue
        missing = unresolved_vars(token.key)
        if missing or not token.key.strip():
            if enabled:
                why = "uses the unset environment variable " + ", ".join("${%s}" % m for m in missing) if missing else "is empty"
                report.warn(
                    token.source_file,
                    "tokens",
                    f'token "{token.name}" has scopes but its key {why}; it is not an API credential',
                )
            continue
        creds.append(ApiToken(token=token.key, scopes=token.scopes, label=token.name))
    if enabled and not creds:
        at.warn(
            "enabled",
            "the API is enabled but has no credential (api.auth.tokens, or tokens entries with"
            " scopes); every API call except /healthz will be refused",
        )
    return ApiConfig(
        enabled=enabled,
        listen=listen,
        tokens=tuple(creds),
        max_body_size=at.size("max_body_size", d.max_body_size),
        read_timeout=at.duration("read_timeout", d.read_timeout),
        max_connections=at.whole("max_connections", d.max_connections, minimum=1),
    )


def build_state(state: At, database: At, config_dir: str, home: str) -> StateConfig:
    d = StateConfig()
    path = state.text("path") or database.text("path") or d.path
    return StateConfig(
        path=resolve_path(path, config_dir, home),
        synchronous=state.choice("synchronous", d.synchronous, ("full", "normal")),
    )


def build_plugin_roots(
    items: list[Located], config_file: str, home: str, report: Report
) -> tuple[str, ...]:
    config_dir = os.path.dirname(config_file)
    roots: list[str] = []
    for item in items:
        key = f"plugin_roots[{item.index}]"
        if not isinstance(item.value, str) or not item.value.strip():
            report.invalid(item.file, key, item.value, "expected a directory path")
            continue
        root = resolve_path(item.value.strip(), config_dir, home)
        if root in roots:
            continue
        if not os.path.isdir(root):
            report.warn(item.file, key, f"plugin root {root} is not a directory; no plugins will be found there")
        roots.append(root)
    if not roots:
        report.warn(config_file, "plugin_roots", "no plugin roots configured; no plugins will be discovered")
    return tuple(roots)


def build_plugins(raw: Any, file_of: Any, report: Report) -> dict[str, PluginConfig]:
    out: dict[str, PluginConfig] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        report.invalid(file_of(("plugins",)), "plugins", raw, "expected a mapping of plugin name to settings")
        return out
    for name, entry in raw.items():
        name = str(name)
        file = file_of(("plugins", name))
        prefix = f"plugins.{name}"
        if entry is not None and not isinstance(entry, dict):
            report.invalid(file, prefix, entry, "expected a mapping of plugin settings")
            continue
        out[name] = _plugin(name, At.in_file(entry or {}, prefix, file, report))
    return out


def _plugin(name: str, at: At) -> PluginConfig:
    enabled = at.flag("enabled", True)
    config = plain(at.mapping("config") or {})
    missing = unresolved_vars(config)
    if missing and enabled:
        names = ", ".join("${%s}" % m for m in missing)
        at.error("config", f"uses the unset environment variable {names}")
    rd = RetryPolicy()
    rat = at.sub("retry")
    retry = RetryPolicy(
        max_attempts=rat.whole("max_attempts", rd.max_attempts, minimum=1),
        backoff_base=rat.duration("backoff_base", rd.backoff_base, positive=True),
    )
    timeouts: dict[str, float] = {}
    tat = at.sub("timeouts")
    for command in tat.data:
        value = tat.duration(str(command), -1.0, positive=True)
        if value > 0:
            timeouts[str(command)] = value
    if at.has("schedule"):
        at.error("schedule", "the singular schedule: form is not supported; use schedules: [{every: 1h}]")
    return PluginConfig(
        name=name,
        enabled=enabled,
        config=config,
        retry=retry,
        timeouts=timeouts,
        parallelism=at.whole("parallelism", None, minimum=1),
        schedules=_schedules(at),
        notify_on_complete=at.flag("notify_on_complete", False),
    )


_TRIGGERS = ("every", "cron", "at", "after")
_CATCH_UP = ("skip", "run_once", "run_all")
_WEEKDAY_NAMES = {
    "sun": 0, "sunday": 0, "mon": 1, "monday": 1, "tue": 2, "tues": 2, "tuesday": 2,
    "wed": 3, "wednesday": 3, "thu": 4, "thurs": 4, "thursday": 4, "fri": 5, "friday": 5,
    "sat": 6, "saturday": 6,
}
AT_EXPECTED = "expected an RFC 3339 time such as 2026-05-03T10:00:00Z or 2026-05-03T20:00:00+10:00"
ONLY_BETWEEN_EXPECTED = 'expected "HH:MM-HH:MM" (24-hour local times, e.g. 08:00-18:00 or 22:00-06:00)'
NOT_ON_EXPECTED = "expected a list of weekdays: names (mon, tuesday) or numbers 0-6 (7 is also Sunday)"


def _schedules(plugin: At) -> tuple[Schedule, ...]:
    raw = plugin.raw("schedules")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        plugin.invalid("schedules", raw, "expected a list of schedules")
        return ()
    out: list[Schedule] = []
    ids: set[str] = set()
    for i, entry in enumerate(raw):
        prefix = plugin.key("schedules") + f"[{i}]"
        file = plugin.file("schedules")
        if not isinstance(entry, dict):
            plugin.report.invalid(file, prefix, entry, "expected a mapping with every:, cron:, at: or after:")
            continue
        at = At.in_file(entry, prefix, file, plugin.report)
        schedule = _schedule(at, file, prefix)
        if schedule is None:
            continue
        if schedule.id in ids:
            at.error("id", f'duplicate schedule id "{schedule.id}"')
            continue
        ids.add(schedule.id)
        out.append(schedule)
    return tuple(out)


def _schedule(at: At, file: str, prefix: str) -> Schedule | None:
    """One schedule entry, or C{None} after reporting why it cannot run."""
    triggers = [t for t in _TRIGGERS if at.has(t)]
    if not triggers:
        at.error("every", f"is required ({EVERY_EXPECTED}), unless the schedule sets cron:, at: or after:")
        return None
    if len(triggers) > 1:
        at.report.error(
            file, prefix, f"sets {' and '.join(triggers)}; expected exactly one of every, cron, at or after"
        )
        return None
    trigger = triggers[0]
    ok = True
    every, cron, when, after = 3600.0, None, None, None
    if trigger == "every":
        try:
            every = parse_every(at.raw("every"))
        except ValueError as e:
            at.invalid("every", at.raw("every"), str(e))
            ok = False
    elif trigger == "cron":
        text = at.raw("cron")
        try:
            if not isinstance(text, str):
                raise CronError('expected a cron expression such as "30 2 * * *" (a string)')
            parse_cron(text)
            cron = text.strip()
        except CronError as e:
            at.error("cron", f"{show_value(text)}: {e}")
            ok = False
    elif trigger == "at":
        when = _at_time(at)
        ok = when is not None
    else:
        after = at.duration("after", -1.0, positive=True)
        if after < 0:
            after, ok = None, False

    zone = at.text("timezone", "")
    if zone:
        try:
            load_zone(zone)
        except ValueError as e:
            at.error("timezone", str(e))
            ok = False
    only_between = _only_between(at)
    not_on = _not_on(at)
    jitter = at.duration("jitter", 0.0)
    if jitter and trigger != "every":
        at.warn("jitter", f"applies only to every schedules (as in ductile-go); ignored for {trigger}")
        jitter = 0.0
    catch_up = at.text("catch_up", "skip") or "skip"
    if catch_up not in _CATCH_UP:
        at.invalid("catch_up", catch_up, "expected skip, run_once or run_all")
        catch_up = "skip"
    elif trigger != "every" and at.has("catch_up"):
        at.warn("catch_up", f"applies only to every schedules; ignored for {trigger}")
        catch_up = "skip"

    command = at.text("command", "poll") or "poll"
    if command == "handle":
        at.invalid("command", command, "schedules may not run handle (it is for events); use poll or a custom command")
        ok = False
    if_running = at.text("if_running", "skip") or "skip"
    if if_running == "cancel":
        at.warn("if_running", 'cancel is not implemented by ductile; using "skip"')
        if_running = "skip"
    elif if_running not in ("skip", "queue"):
        at.invalid("if_running", if_running, "expected skip or queue")
        if_running = "skip"
    payload = plain(at.mapping("payload") or {})
    if not ok:
        return None
    return Schedule(
        id=at.text("id", "default") or "default",
        every=every,
        jitter=jitter,
        command=command,
        payload=payload,
        if_running=if_running,
        cron=cron,
        at=when,
        after=after,
        timezone=zone,
        only_between=only_between,
        not_on=not_on,
        catch_up=catch_up,
    )


def _at_time(at: At) -> float | None:
    raw = at.raw("at")
    if isinstance(raw, datetime):  # an unquoted YAML timestamp
        if raw.tzinfo is None:
            at.invalid("at", str(raw), AT_EXPECTED + " (with a zone offset)")
            return None
        return raw.timestamp()
    if isinstance(raw, str):
        try:
            return parse_rfc3339(raw.strip())
        except ValueError:
            pass
    at.invalid("at", raw, AT_EXPECTED)
    return None


def _clock_minutes(text: str) -> int:
    hours, colon, minutes = text.strip().partition(":")
    if not colon or not hours.isdigit() or len(hours) > 2 or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(text)
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise ValueError(text)
    return h * 60 + m


def _only_between(at: At) -> tuple[int, int] | None:
    if not at.has("only_between"):
        return None
    raw = at.raw("only_between")
    text = raw if isinstance(raw, str) else ""
    parts = text.split("-")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        start, end = _clock_minutes(parts[0]), _clock_minutes(parts[1])
    except ValueError:
        at.invalid("only_between", raw, ONLY_BETWEEN_EXPECTED)
        return None
    if start == end:
        at.invalid("only_between", raw, "start and end must differ; " + ONLY_BETWEEN_EXPECTED)
        return None
    return (start, end)


def _not_on(at: At) -> frozenset[int]:
    raw = at.raw("not_on")
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        at.invalid("not_on", raw, NOT_ON_EXPECTED)
        return frozenset()
    days: set[int] = set()
    for j, item in enumerate(raw):
        day: int | None = None
        if isinstance(item, str):
            day = _WEEKDAY_NAMES.get(item.strip().lower())
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 7:
            day = item % 7
        elif isinstance(item, float) and item.is_integer() and 0 <= item <= 7:
            day = int(item) % 7
        if day is None:
            at.report.invalid(at.file("not_on"), f"{at.key('not_on')}[{j}]", item, NOT_ON_EXPECTED)
            continue
        days.add(day)
    return frozenset(days)


def build_manhole(at: At | None, config_dir: str, home: str) -> ManholeConfig | None:
    if at is None:
        return None
    listen = at.text("listen", required=True)
    host_key = at.text("host_key", required=True)
    authorized = at.text("authorized_keys", required=True)
    return ManholeConfig(
        listen=listen,
        host_key=resolve_path(host_key, config_dir, home) if host_key else "",
        authorized_keys=resolve_path(authorized, config_dir, home) if authorized else "",
        allow_remote=at.flag("allow_remote", False),
    )


def build_pipelines(items: list[Located], report: Report) -> tuple[PipelineSource, ...]:
    """Structural checks only; the pipeline compiler does the rest."""
    out: list[PipelineSource] = []
    seen: dict[str, str] = {}
    for item in items:
        prefix = f"pipelines[{item.index}]"
        if not isinstance(item.value, dict):
            report.invalid(item.file, prefix, item.value, "expected a mapping with name, on and steps")
            continue
        at = At.in_file(item.value, prefix, item.file, report)
        name = at.text("name", required=True)
        on_keys = [k for k in ("on", "on_hook", "on-hook") if at.has(k)]
        if not on_keys:
            at.error("on", "is required (the event type that triggers the pipeline)")
        elif len(on_keys) > 1:
            at.error(on_keys[1], f"give only one of {', '.join(on_keys)}")
        elif isinstance(at.raw(on_keys[0]), (dict, list)):
            at.invalid(on_keys[0], at.raw(on_keys[0]), "expected an event type")
        steps = at.raw("steps")
        if not isinstance(steps, list) or not steps:
            at.invalid("steps", steps, "expected a non-empty list of steps")
        elif not all(isinstance(s, dict) for s in steps):
            bad = next(i for i, s in enumerate(steps) if not isinstance(s, dict))
            report.invalid(item.file, f"{prefix}.steps[{bad}]", steps[bad], "expected a step mapping")
        if name:
            if name in seen:
                at.error("name", f'duplicate pipeline name "{name}" (first defined at {seen[name]})')
                continue
            seen[name] = f"{report.display(item.file)}: {prefix}"
        out.append(PipelineSource(spec=plain(item.value), file=item.file, index=item.index))
    return tuple(out)




def build_metrics(at: At | None) -> MetricsConfig | None:
    """C{metrics.listen}: where to serve /metrics without a token (off when absent)."""
    if at is None:
        return None
    listen = at.text("listen", required=True)
    if not listen:
        return None
    _check_listen(at, "listen", listen)
    return MetricsConfig(listen=listen)
