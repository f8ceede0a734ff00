"""
Everything an instance needs that can be checked before it starts: the
config, the loaded plugins and the compiled pipelines.  Built by the twistd
plugin's option parsing (so a bad config stops twistd with a message, not a
traceback) and by C{ductile config check}.
"""
from __future__ import annotations

from typing import Any, Mapping

import attrs

from ductile.config.models import Config


class InstanceError(Exception):
    """The instance cannot start; the message says why in operator terms."""


@attrs.frozen
class Instance:
    config: Config
    plugins: Mapping[str, Any]
    plugin_problems: tuple[str, ...]
    pipelines: Any
    router: Any


def build_instance(config: Config) -> Instance:
    from ductile.executor import RELAY_PLUGIN
    from ductile.pipelines.compiler import PipelineError, compile_pipelines
    from ductile.pipelines.router import Router
    from ductile.plugins.discovery import discover

    found = discover(config.plugin_roots, allow_symlinks=config.service.allow_symlinks, plugin_configs=config.plugins)
    names = set(found.plugins) | {RELAY_PLUGIN}
    instance_names = [i.name for i in config.instances if i.enabled]
    try:
        pipelines = compile_pipelines(config.pipelines, names, instance_names)
    except PipelineError as e:
        raise InstanceError(str(e)) from None
    return Instance(
        config=config,
        plugins=dict(found.plugins),
        plugin_problems=tuple(found.problems),
        pipelines=pipelines,
        router=Router(pipelines, plugin_configs={n: dict(p.config) for n, p in config.plugins.items()}),
    )
