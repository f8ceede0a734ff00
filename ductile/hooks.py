"""
Lifecycle hooks (contract §3.4): when a root job of a plugin with
C{notify_on_complete: true} ends, the C{on-hook} pipelines for its signal
start — C{job.completed} (succeeded), C{job.failed} (failed or dead) and
C{job.timed_out}.

This module is the pure decision: given a finished job, the config and the
router, which hook jobs to create.  The caller commits them in the same
transaction as the completion that fires them (as successors of the job, or
inside crash recovery's transaction), so a crash can neither lose a hook
nor fire it twice.

Semantics (Go facts from mattjoyce/ductile C{internal/dispatch/dispatcher.go}
C{maybeFireHooks}/C{failOrRetry}, C{internal/router/engine.go} C{NextHook}
and C{internal/scheduler/scheduler.go} C{recoverOrphanedJobs}):

  - Only root jobs fire: a job with no pipeline context.  Go enqueues a hook
    job without context, so a hook job is itself a root and fires hooks
    when its own plugin notifies; here a hook job keeps its pipeline
    context (so a hook pipeline runs all its steps, where Go runs only the
    entry step), and is treated as a root for this purpose by its
    C{submitted_by="hook"}.
  - A retry being scheduled fires nothing; the attempt that ends the job
    does (a retry that then succeeds fires C{job.completed}).
  - Payload: C{{job_id, plugin, command, status}} plus C{result} on success,
    C{reason} and C{error} on failure or timeout, and C{error} with
    C{recovery: true} for a job crash recovery made dead.
  - C{reason} is Go's retry-decision reason: C{timeout}, C{exit_code_78},
    C{spawn_error}, C{nil_response}, else C{plugin_error}.
  - Hook jobs: C{submitted_by="hook"}, C{parent_job_id} the job that fired
    them (Go links them so the chain can be walked), max attempts from the
    hook plugin's retry policy.
  - Depth: Go counts the C{hook} jobs up the parent chain and refuses a new
    hook once C{depth + 1 > service.hook_max_depth}, logging "hook enqueue
    refused: max depth reached".  Here the depth is carried in the hook
    job's context (C{ductile_hook_depth}), so no parent read is needed and a
    pruned parent cannot reset the count.
  - Where Go fires only for plugin-run outcomes, this fires for every
    terminal end of a root job (e.g. "plugin not loaded", a dead relay
    delivery): an operator asking to be told of failures wants those too.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import attrs
from twisted.logger import Logger

from ductile.config.models import Config
from ductile.events import Event
from ductile.queue import DEAD, FAILED, SUCCEEDED, TIMED_OUT, ClaimedJob, Completion, JobSpec, fetch_job

log = Logger()

#: C{submitted_by} of every hook job.
HOOK_SUBMITTER = "hook"
#: Context key carrying how many hook jobs deep a hook job is (1 for the
#: hook of a plain root job).
HOOK_DEPTH = "ductile_hook_depth"

SIGNAL_FOR_STATUS: Mapping[str, str] = {
    SUCCEEDED: "job.completed",
    FAILED: "job.failed",
    DEAD: "job.failed",
    TIMED_OUT: "job.timed_out",
}

#: Error prefixes of the plugin runner, to Go's retry-decision reasons.
_REASONS = (
    ("plugin exited with code 78", "exit_code_78"),
    ("cannot run plugin", "spawn_error"),
    ("cannot spawn plugin", "spawn_error"),
    ("invalid plugin response", "nil_response"),
)


@attrs.frozen
class FinishedJob:
    """What the decision needs to know about a job that just ended."""

    id: str
    plugin: str
    command: str
    submitted_by: str
    #: True when the job ran outside any pipeline (no event context).
    contextless: bool
    context: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_claimed(cls, job: ClaimedJob) -> "FinishedJob":
        return cls(job.id, job.plugin, job.command, job.submitted_by or "", job.context_id is None,
                   job.context)

    @property
    def is_root(self) -> bool:
        return self.contextless or self.submitted_by == HOOK_SUBMITTER

    @property
    def hook_depth(self) -> int:
        """How many hook jobs deep this job is (0 for a job nobody hooked)."""
        if self.submitted_by != HOOK_SUBMITTER:
            return 0
        depth = self.context.get(HOOK_DEPTH)
        return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else 1


def reason_for(status: str, error: str | None) -> str:
    """Go's retry-decision reason for a failed or timed-out job."""
    if status == TIMED_OUT:
        return "timeout"
    for prefix, reason in _REASONS:
        if (error or "").startswith(prefix):
            return reason
    return "plugin_error"


def completion_payload(job: FinishedJob, completion: Completion) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "job_id": job.id, "plugin": job.plugin, "command": job.command, "status": completion.status,
    }
    if completion.status == SUCCEEDED:
        payload["result"] = completion.result
        return payload
    if completion.status != DEAD:
        payload["reason"] = reason_for(completion.status, completion.error)
    if completion.error is not None:
        payload["error"] = completion.error
    return payload


def plan_hooks(
    job: FinishedJob, signal: str, payload: Mapping[str, Any], config: Config, router: Any, now: float
) -> list[JobSpec]:
    """
    The hook jobs C{job}'s end fires: none unless it is a root job of a
    plugin with C{notify_on_complete}, and none once the hook chain is
    C{service.hook_max_depth} deep (logged).  Their C{parent_job_id} is
    left to the caller (the job's completion or recovery sets it).
    """
    if not signal or not job.is_root or not config.plugin_config(job.plugin).notify_on_complete:
        return []
    max_depth = config.service.hook_max_depth
    depth = job.hook_depth
    if depth + 1 > max_depth:
        log.warn(
            "hook enqueue refused: max depth reached ({signal} of job {job_id} ({plugin}) at hook depth "
            "{current_depth}, service.hook_max_depth {max_depth})",
            signal=signal, job_id=job.id, plugin=job.plugin, current_depth=depth, max_depth=max_depth,
        )
        return []
    from ductile.executor import dispatch_to_spec

    event = Event.create(signal, dict(payload), job.plugin, now)
    try:
        dispatches = router.route_hook(event, job.plugin, {HOOK_DEPTH: depth + 1})
        specs = [dispatch_to_spec(d, config, submitted_by=HOOK_SUBMITTER, source_event_id=event.event_id)
                 for d in dispatches]
    except Exception:
        # A hook must never keep the job's own end from being recorded.
        log.failure("hook routing error: {signal} of job {job_id} ({plugin}) fires no hook",
                     signal=signal, job_id=job.id, plugin=job.plugin)
        return []
    for dispatch in dispatches:
        log.info(
            "hook {signal} of job {job_id} ({plugin}) starts pipeline {pipeline} step {step_id} ({hook_plugin})",
            signal=signal, job_id=job.id, plugin=job.plugin, pipeline=dispatch.pipeline,
            step_id=dispatch.step_id, hook_plugin=dispatch.plugin,
        )
    return specs


def with_hooks(job: ClaimedJob, completion: Completion, config: Config, router: Any, now: float) -> Completion:
    """
    C{completion} with the hook jobs its end fires added to its successors,
    so they are committed with it.  A retry (status C{queued}) or a
    C{skipped} job fires nothing.
    """
    signal = SIGNAL_FOR_STATUS.get(completion.status)
    if signal is None or not config.plugin_config(job.plugin).notify_on_complete:
        return completion
    finished = FinishedJob.from_claimed(job)
    hooks = plan_hooks(finished, signal, completion_payload(finished, completion), config, router, now)
    if not hooks:
        return completion
    return attrs.evolve(completion, successors=(*completion.successors, *hooks))


@attrs.frozen
class RecoveryHooks:
    """
    Crash recovery's hook decision, run inside its transaction (a plain
    cursor in the pool thread): C{self(txn, job_id, now)} for each job
    recovery made dead returns the C{job.failed} hook jobs to create.
    """

    config: Config
    router: Any

    def __call__(self, txn: Any, job_id: str, now: float) -> Sequence[JobSpec]:
        row = fetch_job(txn, job_id)
        if row is None or not self.config.plugin_config(row["plugin"]).notify_on_complete:
            return []
        context: Mapping[str, Any] = {}
        if row["event_context_id"] and row["submitted_by"] == HOOK_SUBMITTER:
            txn.execute("SELECT accumulated_json FROM event_context WHERE id=?", (row["event_context_id"],))
            found = txn.fetchone()
            context = json.loads(found[0]) if found else {}
        job = FinishedJob(row["id"], row["plugin"], row["command"], row["submitted_by"] or "",
                          row["event_context_id"] is None, context)
        payload = {
            "job_id": job.id, "plugin": job.plugin, "command": job.command, "status": DEAD,
            "error": row["last_error"], "recovery": True,
        }
        return [attrs.evolve(s, parent_job_id=job.id) for s in
                plan_hooks(job, SIGNAL_FOR_STATUS[DEAD], payload, self.config, self.router, now)]
