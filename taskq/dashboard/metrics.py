"""Queue-level Prometheus metrics, computed once per cluster from one snapshot.

Served by ``taskq dashboard`` at ``/metrics`` and by ``taskq exporter`` alone. Names follow
the node metrics' rules: ``taskq_`` prefix, base units, no node/host/pid labels; the
only labels are ``queue`` (one value per queue of the snapshot, capped by
:data:`taskq.broker.snapshot.MAX_QUEUES`) and ``outcome`` (a fixed set).

=====================================  ========================================================
``taskq_queue_depth{queue}``           tasks waiting, not yet claimed
``taskq_queue_in_flight{queue}``       claimed, not yet reported
``taskq_queue_lag{queue}``             the consumer group's lag
``taskq_queue_oldest_age_seconds``     how long the oldest waiting task has waited (0: none)
``taskq_queue_delayed{queue}``         retries waiting out their backoff
``taskq_queue_dead{queue}``            dead letters kept
``taskq_queue_tasks_total``            {queue,outcome}: ok|failed|retried|dead|suppressed
``taskq_queue_enqueued_total{queue}``  tasks ever enqueued
``taskq_nodes_live``                   nodes whose heartbeat is recent
``taskq_exporter_redis_up``            1 if the last sample reached Redis, else 0
=====================================  ========================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskq.broker.snapshot import Snapshot

OUTCOMES = {"ok": "done", "failed": "failed", "retried": "retried", "dead": "dead",
            "suppressed": "suppressed"}
"""Outcome label → the stats-hash field that counts it."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = (
    ("taskq_queue_depth", "Tasks waiting in the queue, not yet claimed by a node.", "depth"),
    ("taskq_queue_in_flight", "Tasks claimed by a node and not yet reported.", "in_flight"),
    ("taskq_queue_lag", "The consumer group's lag: entries not yet delivered to any node.", "lag"),
    ("taskq_queue_delayed", "Retries waiting out their backoff.", "delayed"),
    ("taskq_queue_dead", "Dead-lettered tasks kept in the queue's dead-letter stream.", "dead"),
)


class SnapshotCollector(Collector):
    """Metric families of the snapshot it is given (None: Redis was unreachable)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily("taskq_exporter_redis_up",
                               "1 if the last sample of Redis succeeded, else 0.")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is None:
            return
        for name, doc, attr in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["queue"])
            for q in snap.queues:
                family.add_metric([q.name], getattr(q, attr))
            yield family
        age = GaugeMetricFamily("taskq_queue_oldest_age_seconds",
                                "Seconds the oldest waiting task has waited (0 when none waits).",
                                labels=["queue"])
        tasks = CounterMetricFamily("taskq_queue_tasks", "Tasks finished, by outcome (the stats hash).",
                                    labels=["queue", "outcome"])
        enqueued = CounterMetricFamily("taskq_queue_enqueued", "Tasks enqueued.", labels=["queue"])
        for q in snap.queues:
            age.add_metric([q.name], q.oldest_age or 0.0)
            for outcome, stat in OUTCOMES.items():
                tasks.add_metric([q.name, outcome], q.counters.get(stat, 0))
            enqueued.add_metric([q.name], q.counters.get("enqueued", 0))
        yield age
        yield tasks
        yield enqueued
        live = GaugeMetricFamily("taskq_nodes_live", "Worker nodes with a recent heartbeat.")
        live.add_metric([], snap.nodes_live)
        yield live


class Exposition:
    """A private registry holding one :class:`SnapshotCollector`."""

    def __init__(self) -> None:
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self, snap: Snapshot | None) -> bytes:
        self.collector.snapshot = snap
        return generate_latest(self.registry)
