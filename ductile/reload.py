"""
Reloading the configuration of a running instance (SIGHUP, C{POST
/system/reload}, C{ductile system reload}).

The new config is loaded and checked exactly as at startup (L{load_config},
L{build_instance}: plugins discovered, pipelines compiled).  Anything wrong
and nothing changes: the old config keeps running and the caller gets a
L{ReloadError} whose message names the problem.  Otherwise the service swaps
the new pieces in at once (no half-applied state is ever visible), while
jobs already running finish under the config they started with.

Some settings cannot change without a restart (the sockets, the state
database, the identity, the log setup): L{plan_reload} keeps their old
values in the config that is swapped in and reports each as a "needs a
restart" warning.  Go ductile instead refuses the whole reload when
C{state.path} or C{api.listen} changed; keeping the rest of the new config
live is the friendlier choice for C{systemctl reload}.

This module holds the policy (what may change live, the report, the
serialisation of concurrent reloads); the service does the swap itself
(L{ductile.service.DuctileService.swap_instance}), so the logic here is
tested with fakes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from ductile.config.models import Config
from ductile.timestamps import format_rfc3339nano

log = Logger(namespace="ductile.reload")

#: Why the queued jobs of a plugin the reload removed or disabled are dead.
REMOVED_PLUGIN_REASON = "plugin removed or disabled by a config reload"


class ReloadError(Exception):
    """The reload was refused; the old config is still the one running."""


@attrs.frozen
class ReloadPlan:
    """
    What a reload will do.

    @ivar config: the config to swap in: the new one, with every setting
        that needs a restart kept at its running value.
    @ivar restart_needed: one message per such setting that changed.
    """

    config: Config
    restart_needed: tuple[str, ...] = ()


@attrs.frozen
class _RestartOnly:
    """A setting that cannot change live: how to read it and put it back."""

    key: str
    get: Callable[[Config], Any]
    put: Callable[[Config, Any], Config]
    #: Show the old and new values in the warning (never for secrets/objects).
    show: bool = True


def _setting(section: str, field: str) -> _RestartOnly:
    """C{section.field} of a config section that is always present."""
    return _RestartOnly(
        f"{section}.{field}",
        lambda c: getattr(getattr(c, section), field),
        lambda c, v: attrs.evolve(c, **{section: attrs.evolve(getattr(c, section), **{field: v})}),
    )


def _ingress(field: str) -> _RestartOnly:
    def put(c: Config, v: Any) -> Config:
        if c.remote_ingress is None:
            return c
        return attrs.evolve(c, remote_ingress=attrs.evolve(c.remote_ingress, **{field: v}))

    return _RestartOnly(
        f"remote_ingress.{field}",
        lambda c: getattr(c.remote_ingress, field) if c.remote_ingress is not None else None,
        put,
    )


def _whole(key: str, show: bool = False) -> _RestartOnly:
    return _RestartOnly(key, lambda c: getattr(c, key), lambda c, v: attrs.evolve(c, **{key: v}), show=show)


#: Order matters: C{remote_ingress} as a whole (present or not) is settled
#: before its fields are compared.
RESTART_ONLY: tuple[_RestartOnly, ...] = (
    _setting("service", "name"),
    _setting("service", "log_level"),
    _setting("service", "log_format"),
    _setting("state", "path"),
    _setting("state", "synchronous"),
    _setting("api", "enabled"),
    _setting("api", "listen"),
    _setting("api", "max_body_size"),
    _setting("api", "read_timeout"),
    _setting("api", "max_connections"),
    _RestartOnly(
        "remote_ingress",
        lambda c: c.remote_ingress is not None,
        # Adding or removing the receiver mounts or unmounts a web resource
        # and changes the site's body limits: keep the running one (or none).
        lambda c, present: c,
    ),
    _ingress("listen_path"),
    _ingress("max_body_size"),
    _whole("metrics"),
    _whole("manhole"),
)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """
    The config to swap in for C{new}, and the restart warnings: each
    setting in L{RESTART_ONLY} that differs keeps its running value.
    """
    effective = new
    notes: list[str] = []
    for item in RESTART_ONLY:
        before, after = item.get(old), item.get(new)
        if before == after:
            continue
        if item.key == "remote_ingress":
            effective = attrs.evolve(effective, remote_ingress=old.remote_ingress if before else None)
            notes.append(
                "remote_ingress was "
                + ("removed" if before else "added")
                + " but adding or removing the relay receiver needs a restart; "
                + ("it keeps accepting its current peers" if before else "it stays off")
            )
            continue
        if item.key.startswith("remote_ingress.") and (old.remote_ingress is None or new.remote_ingress is None):
            continue  # covered by the whole-section note above
        effective = item.put(effective, before)
        if item.show:
            notes.append(f"{item.key} changed from {before!r} to {after!r} but needs a restart; still using {before!r}")
        else:
            notes.append(f"{item.key} changed but needs a restart; still using the running settings")
    return ReloadPlan(config=effective, restart_needed=tuple(notes))


def _names_diff(label: str, before: Iterable[str], after: Iterable[str]) -> str | None:
    old, new = set(before), set(after)
    added, removed = sorted(new - old), sorted(old - new)
    if not added and not removed:
        return None
    parts = [f"+{n}" for n in added] + [f"-{n}" for n in removed]
    return f"{label}: {' '.join(parts)}"


def describe_changes(old: Any, new: Any) -> tuple[str, ...]:
    """
    A short, secret-free summary of what the reload changes (names only):
    plugins, pipelines, relay peers and instances, API tokens (a count).

    @param old: the running L{ductile.instance.Instance}.
    @param new: the one swapped in.
    """
    out = []
    for label, before, after in (
        ("plugins", old.plugins, new.plugins),
        ("pipelines", old.router.pipeline_names(), new.router.pipeline_names()),
        ("relay instances", _enabled(old.config.instances), _enabled(new.config.instances)),
        ("relay peers", _peers(old.config), _peers(new.config)),
    ):
        diff = _names_diff(label, before, after)
        if diff:
            out.append(diff)
    old_tokens = {(t.label, t.token, tuple(t.scopes)) for t in old.config.api.tokens}
    new_tokens = {(t.label, t.token, tuple(t.scopes)) for t in new.config.api.tokens}
    if old_tokens != new_tokens:
        out.append(f"api tokens: {len(new_tokens - old_tokens)} new or changed, {len(old_tokens - new_tokens)} removed")
    return tuple(out)


def _enabled(instances: Sequence[Any]) -> list[str]:
    return [i.name for i in instances if i.enabled]


def _peers(config: Config) -> list[str]:
    ingress = config.remote_ingress
    return [p.name for p in ingress.peers if p.enabled] if ingress is not None else []


def load_instance(config_file: str, environ: Mapping[str, str] | None = None) -> Any:
    """
    Load and check C{config_file} exactly as startup does; the
    L{ductile.instance.Instance} it describes.

    @raise ReloadError: with the loader's or compiler's message.
    """
    from ductile.config import ConfigError, load_config
    from ductile.instance import InstanceError, build_instance

    try:
        return build_instance(load_config(config_file, environ=environ))
    except (ConfigError, InstanceError) as e:
        raise ReloadError(str(e)) from None
    except OSError as e:
        raise ReloadError(f"cannot read the config: {e.filename or config_file}: {e.strerror}") from None


class Reloader:
    """
    Serialises reloads and turns one into a report.

    @param current: the running instance (called at each reload).
    @param load: C{load(config_file) -> Instance}; raises L{ReloadError}.
    @param swap: C{swap(instance, plan)}: put the instance in service, all at
        once; may return a Deferred/coroutine for follow-up work that fires
        with the ids of jobs it made dead.
    @param running: whether the service can be reloaded now.
    """

    def __init__(
        self,
        clock: Any,
        current: Callable[[], Any],
        swap: Callable[[Any, ReloadPlan], Any],
        load: Callable[[str], Any] = load_instance,
        running: Callable[[], bool] = lambda: True,
    ) -> None:
        self._clock = clock
        self._current = current
        self._swap = swap
        self._load = load
        self._running = running
        self._lock = defer.DeferredLock()

    def reload(self) -> defer.Deferred[dict[str, Any]]:
        """Fire with the report, or fail with L{ReloadError} (nothing changed)."""
        return self._lock.run(lambda: defer.ensureDeferred(self._reload()))

    async def _reload(self) -> dict[str, Any]:
        if not self._running():
            message = "the instance is not running (still starting or stopping)"
            log.warn("config reload refused: {error}", error=message)
            raise ReloadError(message)
        old = self._current()
        config_file = old.config.config_file
        log.info("reloading the config from {config_file}", config_file=config_file)
        try:
            new = self._load(config_file)
        except ReloadError as e:
            log.error("config reload refused, still running the previous config: {error}", error=str(e))
            raise
        plan = plan_reload(old.config, new.config)
        if plan.config is not new.config:
            new = attrs.evolve(new, config=plan.config)
        changes = describe_changes(old, new)
        swapped = self._swap(new, plan)
        dead: Sequence[str] = []
        if swapped is not None:
            dead = await defer.ensureDeferred(swapped) or []
        for note in plan.restart_needed:
            log.warn("config reload: {note}", note=note)
        for problem in new.plugin_problems:
            log.warn("plugin not loaded: {problem}", problem=problem)
        for warning in new.config.warnings:
            log.warn("config: {config_warning}", config_warning=warning)
        if dead:
            log.warn("config reload: {count} queued job(s) of removed or disabled plugins are dead", count=len(dead))
        log.info(
            "config reloaded: {summary}",
            summary="; ".join(changes) if changes else "no plugin, pipeline, relay or token changes",
        )
        return {
            "status": "reloaded",
            "reloaded_at": format_rfc3339nano(self._clock.seconds()),
            "message": "configuration reloaded",
            "changes": list(changes),
            "restart_needed": list(plan.restart_needed),
            "warnings": list(new.plugin_problems) + list(new.config.warnings),
            "dead_jobs": list(dead),
        }
