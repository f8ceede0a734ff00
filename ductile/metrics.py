"""
Prometheus text exposition (format 0.0.4) of what an operator watches:
relay ingress outcomes, relay deliveries and their latency, jobs by status,
queue depth and age, plugin run durations, group-commit batch sizes.

Counters that only the reactor thread touches live here as plain numbers;
job figures are read from the database at scrape time so they are true
across restarts.
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable, Mapping

import attrs

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in sorted(labels.items()):
        escaped = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


@attrs.define
class Histogram:
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[int] = attrs.field(factory=list)
    total: float = 0.0
    n: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: Mapping[str, str]) -> Iterable[str]:
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            yield f"{name}_bucket{_labels({**labels, 'le': _num(bound)})} {running}"
        yield f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.n}"
        yield f"{name}_sum{_labels(labels)} {_num(self.total)}"
        yield f"{name}_count{_labels(labels)} {self.n}"


@attrs.define
class Metrics:
    """In-memory counters, fed by the executor."""

    relay_deliveries: dict[tuple[str, str], int] = attrs.field(factory=dict)
    relay_attempt_seconds: dict[str, Histogram] = attrs.field(factory=dict)
    plugin_run_seconds: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)

    def relay_attempt(self, instance: str, outcome: str, seconds: float) -> None:
        key = (instance, outcome)
        self.relay_deliveries[key] = self.relay_deliveries.get(key, 0) + 1
        self.relay_attempt_seconds.setdefault(instance, Histogram()).observe(seconds)

    def plugin_run(self, plugin: str, outcome: str, seconds: float) -> None:
        self.plugin_run_seconds.setdefault((plugin, outcome), Histogram()).observe(seconds)


def render(
    metrics: Metrics,
    ingress: Any | None,
    writer_stats: Any | None,
    job_counts: Mapping[str, int],
    oldest_queued_age: float | None,
    statuses: Iterable[str],
) -> str:
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    if ingress is not None:
        snap = ingress.snapshot()
        family("ductile_relay_ingress_accepted_total", "counter", "Relay requests accepted (202).")
        out.append(f"ductile_relay_ingress_accepted_total {snap['accepted']}")
        family("ductile_relay_ingress_deduplicated_total", "counter",
               "Accepted relay requests that matched an existing job (replays).")
        out.append(f"ductile_relay_ingress_deduplicated_total {snap['deduplicated']}")
        family("ductile_relay_ingress_rejected_total", "counter", "Relay requests rejected, by reason.")
        for reason, n in sorted(snap["rejected"].items()):
            out.append(f"ductile_relay_ingress_rejected_total{_labels({'reason': reason})} {n}")

    family("ductile_relay_deliveries_total", "counter", "Outbound relay attempts, by instance and outcome.")
    for (instance, outcome), n in sorted(metrics.relay_deliveries.items()):
        out.append(f"ductile_relay_deliveries_total{_labels({'instance': instance, 'outcome': outcome})} {n}")
    family("ductile_relay_attempt_duration_seconds", "histogram", "Outbound relay attempt latency.")
    for instance, hist in sorted(metrics.relay_attempt_seconds.items()):
        out.extend(hist.lines("ductile_relay_attempt_duration_seconds", {"instance": instance}))

    family("ductile_jobs", "gauge", "Jobs in the state database, by status.")
    for status in statuses:
        out.append(f"ductile_jobs{_labels({'status': status})} {job_counts.get(status, 0)}")
    family("ductile_queue_depth", "gauge", "Jobs queued or running.")
    out.append(f"ductile_queue_depth {job_counts.get('queued', 0) + job_counts.get('running', 0)}")
    family("ductile_queue_oldest_queued_age_seconds", "gauge", "Age of the oldest queued job (0 when none).")
    out.append(f"ductile_queue_oldest_queued_age_seconds {_num(oldest_queued_age or 0.0)}")

    family("ductile_plugin_run_duration_seconds", "histogram", "Plugin process run time, by plugin and outcome.")
    for (plugin, outcome), hist in sorted(metrics.plugin_run_seconds.items()):
        out.extend(hist.lines("ductile_plugin_run_duration_seconds", {"plugin": plugin, "outcome": outcome}))

    if writer_stats is not None:
        family("ductile_db_transactions_total", "counter", "Write transactions committed by the group-commit writer.")
        out.append(f"ductile_db_transactions_total {writer_stats.transactions}")
        family("ductile_db_writes_total", "counter", "Writes carried by those transactions.")
        out.append(f"ductile_db_writes_total {writer_stats.writes}")
        family("ductile_db_largest_batch", "gauge", "Most writes committed in one transaction so far.")
        out.append(f"ductile_db_largest_batch {writer_stats.largest_batch}")
    return "\n".join(out) + "\n"
