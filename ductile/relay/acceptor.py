"""
What "accepted" means on the receiving side (contract §1.9): the relayed
event becomes a fresh local root event, is routed with the local router, and
every resulting job is committed — with dedupe — in one transaction before
the ingress answers 202.
"""
from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer

from ductile.config.models import Config
from ductile.events import Event
from ductile.executor import dispatch_to_spec
from ductile.queue import EnqueueResult, JobQueue
from ductile.relay.ingress import Acceptance


class RelayAcceptor:
    def __init__(self, config: Config, router: Any, queue: JobQueue) -> None:
        self._config = config
        self._router = router
        self._queue = queue

    def accept(self, peer: str, event: Event, baggage: Mapping[str, Any]) -> defer.Deferred[Any]:
        # Plain Deferred callbacks, not a coroutine: this runs for every
        # accepted relay, and the coroutine machinery cost more than the rest.
        dispatches = self._router.route_root(event, dict(baggage))
        if not dispatches:
            return defer.succeed(Acceptance(job_id=None, deduplicated=False))
        specs = [
            dispatch_to_spec(d, self._config, submitted_by=f"relay:{peer}", source_event_id=event.event_id)
            for d in dispatches
        ]
        return self._queue.enqueue(specs).addCallback(_first_acceptance)


def _first_acceptance(results: list[EnqueueResult]) -> Acceptance:
    first = results[0]
    return Acceptance(job_id=first.job_id, deduplicated=first.deduplicated)
