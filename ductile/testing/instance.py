"""
Whole ductile instances, in-process, on real loopback sockets with real
SQLite files and real plugin processes — for end-to-end tests.
"""
from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable, Mapping

import yaml
from twisted.internet import defer

from ductile.config import load_config
from ductile.instance import build_instance
from ductile.service import DuctileService


def write_config(directory: str, files: Mapping[str, Any]) -> str:
    """Write C{{name: data}} as YAML files into C{directory}; return it."""
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            if isinstance(data, (bytes, str)):
                f.write(data if isinstance(data, str) else data.decode())
            else:
                yaml.safe_dump(data, f, sort_keys=False)
    return directory


async def start_instance(
    testcase: Any, config_dir: str, environ: Mapping[str, str] | None = None, reactor: Any = None
) -> DuctileService:
    """Load, build and start an instance; it is stopped at test cleanup."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    config = load_config(config_dir, environ=dict(environ or os.environ))
    service = DuctileService(build_instance(config), reactor)
    service.startService()
    testcase.addCleanup(lambda: service.stopService() if service.running else None)
    await service.started
    return service


def port_of(service: DuctileService) -> int:
    return service.port.getHost().port


async def wait_until(
    service: DuctileService, check: Callable[[], Awaitable[Any]], timeout: float = 20.0
) -> Any:
    """
    Re-evaluate C{check()} after every commit that changes work on
    C{service}'s queue (no polling); return its first truthy value.
    """
    reactor = service.reactor
    assert service.queue is not None
    changed: list[defer.Deferred[None]] = []

    def notify() -> None:
        # Taken before firing: a waiter resumed here may append the next one,
        # which must wait for the next commit, not this loop.
        waiting, changed[:] = list(changed), []
        for d in waiting:
            d.callback(None)

    service.queue.on_new_work(notify)
    deadline = reactor.seconds() + timeout
    while True:
        wake: defer.Deferred[None] = defer.Deferred()
        changed.append(wake)
        value = await check()
        if value:
            return value
        remaining = deadline - reactor.seconds()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout}s")
        wake.addTimeout(remaining, reactor)
        try:
            await wake
        except defer.TimeoutError:
            value = await check()
            if value:
                return value
            raise AssertionError(f"condition not met within {timeout}s") from None


def read_records(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for configs that must name one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
