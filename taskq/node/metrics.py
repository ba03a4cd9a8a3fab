"""The node's Prometheus metrics: plain counters on the hot path, one Collector at scrape.

The node parent is a single-threaded event loop, so what it counts per task is a few
dict increments and one bisect into histogram buckets (:class:`NodeMetrics`), and nothing
of ``prometheus_client`` runs until a scrape: then :class:`_Collector` turns the counters,
plus the pool's records and each pool process's ``/proc/<pid>/statm``, into metric
families on one ordinary ``CollectorRegistry`` (no multiprocess mode: the children report
over their pipes, so the parent's numbers are exact).

Names are in base units with the ``taskq_`` prefix and no node/host/pid label
(Prometheus adds ``instance``). Label values are bounded: ``queue`` by the node's queues,
``task`` by :data:`MAX_TASK_LABELS` (later names count as ``_other``; pickled callables
are ``_pickled``), ``slot`` by ``--procs``, ``op``/``outcome``/``state``/``reason`` by
fixed sets. See README "Monitoring" for the table.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from taskq.message import Entry, Report
from taskq.node.exits import EXIT_REASONS, rss_of
from taskq.node.holdings import Holdings
from taskq.node.pool import SupervisedPool

MAX_TASK_LABELS = 200
"""Distinct ``task`` label values; past it a name counts as ``_other``."""
OTHER, UNKNOWN = "_other", "_unknown"
OUTCOMES = {"ok": "ok", "fail": "failed", "retry": "retried", "dead": "dead",
            "cancelled": "cancelled"}
"""Report kind → ``outcome`` label (plus ``suppressed``: a report whose lease had passed)."""
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 1800.0, 3600.0)
REDIS_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1.0, 2.5, 10.0)
REDIS_OPS = ("claim", "complete", "renew", "reclaim", "promote", "heartbeat")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Hist:
    """A histogram as plain numbers: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "ms", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.ms = [b * 1000 for b in bounds]  # for a caller that bisects milliseconds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.total += value

    def family_args(self) -> tuple[list[tuple[str, float]], float]:
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets, self.total


class NodeMetrics:
    """What one node counts, in plain ints, dicts and lists (per queue index)."""

    def __init__(self, queues: Sequence[str]) -> None:
        self.queues = tuple(queues)
        n = len(self.queues)
        self.claimed = [0] * n
        self.reclaimed = self.leases_lost = 0
        self.completed: dict[tuple[int, str, str], int] = {}
        self.duration: dict[tuple[int, str], Hist] = {}
        self.wait = [Hist(WAIT_BUCKETS) for _ in range(n)]
        self.redis_seconds = {op: Hist(REDIS_BUCKETS) for op in REDIS_OPS}
        self.redis_errors = dict.fromkeys(REDIS_OPS, 0)
        self.clock_offset_ms = 0.0
        """Redis's clock minus ours (ms), refreshed with TIME in housekeeping."""
        self._labels: set[str] = set()

    def task_label(self, task: str) -> str:
        """The bounded ``task`` label of a task name."""
        if task in self._labels:
            return task
        if not task:
            return UNKNOWN
        if len(self._labels) >= MAX_TASK_LABELS:
            return OTHER
        self._labels.add(task)
        return task

    # -- the hot path: called by the node loop ----------------------------------------

    def claimed_entries(self, qi: int, entries: Sequence[Entry]) -> None:
        """A claim delivered these: count them, and how long each waited (Redis's clock:
        an entry id's milliseconds are the server's time at XADD). Inlined, in ms: it
        runs for every task."""
        self.claimed[qi] += len(entries)
        now_ms = time.time() * 1000 + self.clock_offset_ms
        hist = self.wait[qi]
        counts, bounds, total = hist.counts, hist.ms, 0.0
        for entry in entries:
            entry_id = entry[0]
            waited = now_ms - int(entry_id[:entry_id.index(b"-")])
            if waited < 0.0:
                waited = 0.0
            counts[bisect_left(bounds, waited)] += 1
            total += waited
        hist.total += total / 1000

    def finished(self, qi: int, task: str, duration: float) -> None:
        key = (qi, self.task_label(task))
        hist = self.duration.get(key)
        if hist is None:
            hist = self.duration[key] = Hist(DURATION_BUCKETS)
        hist.observe(duration)

    def reported(self, qi: int, reports: Sequence[tuple[bytes, Report]], suppressed: int) -> None:
        """A completion call applied ``reports`` but ``suppressed`` of them (their lease had
        passed to another node). Redis says how many, not which: the first ones are
        counted as suppressed, so the totals are exact and the attribution approximate
        (a lease is usually lost for everything held at once)."""
        completed, label = self.completed, self.task_label
        for i, (_, report) in enumerate(reports):
            outcome = "suppressed" if i < suppressed else OUTCOMES.get(report.kind, report.kind)
            key = (qi, label(report.task), outcome)
            completed[key] = completed.get(key, 0) + 1
        self.leases_lost += suppressed

    def timed(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one Redis exchange, timed; a failure is counted and re-raised."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except Exception:
            self.redis_errors[op] += 1
            raise
        finally:
            self.redis_seconds[op].observe(time.perf_counter() - t0)


class _Collector:
    """The metric families of one node, built at scrape time (prometheus_client calls
    ``collect()`` from :meth:`Exposition.render`, in the node loop)."""

    def __init__(self, m: NodeMetrics, holdings: Holdings, pool: SupervisedPool) -> None:
        self.m, self.holdings, self.pool = m, holdings, pool

    def in_flight(self) -> list[int]:
        n = [0] * len(self.m.queues)
        for qi, _ in self.holdings.held:
            n[qi] += 1
        for qi, _, _ in self.holdings.unreported:
            n[qi] += 1
        return n

    def collect(self) -> Iterator[Metric]:
        m, queues = self.m, self.m.queues
        yield _per_queue(CounterMetricFamily(
            "taskq_tasks_claimed", "Tasks this node claimed from the queue.",
            labels=["queue"]), queues, m.claimed)
        done = CounterMetricFamily("taskq_tasks_completed", "Tasks this node reported, by outcome.",
                                   labels=["queue", "task", "outcome"])
        for (qi, task, outcome), n in sorted(m.completed.items()):
            done.add_metric([queues[qi], task, outcome], n)
        yield done
        dur = HistogramMetricFamily("taskq_task_duration_seconds",
                                    "Run time of a task, measured in its pool process.",
                                    labels=["queue", "task"])
        for (qi, task), hist in sorted(m.duration.items()):
            dur.add_metric([queues[qi], task], *hist.family_args())
        yield dur
        wait = HistogramMetricFamily("taskq_task_queue_wait_seconds",
                                     "Claim time minus enqueue time, on Redis's clock.",
                                     labels=["queue"])
        for q, hist in zip(queues, m.wait, strict=True):
            wait.add_metric([q], *hist.family_args())
        yield wait
        yield _per_queue(GaugeMetricFamily(
            "taskq_tasks_in_flight", "Tasks held by this node: running, queued in its pool, "
            "or finished and not yet reported.", labels=["queue"]), queues, self.in_flight())
        yield from self._pool()
        lost = CounterMetricFamily("taskq_leases_lost", "Reports suppressed because the "
                                   "task's lease had passed to another node.")
        lost.add_metric([], m.leases_lost)
        yield lost
        reclaimed = CounterMetricFamily("taskq_tasks_reclaimed",
                                        "Tasks this node took over after their lease expired.")
        reclaimed.add_metric([], m.reclaimed)
        yield reclaimed
        yield from self._redis()

    def _pool(self) -> Iterator[Metric]:
        procs = self.pool.processes()
        states = GaugeMetricFamily("taskq_pool_processes", "Pool processes by state.",
                                   labels=["state"])
        for state in ("busy", "idle", "starting"):
            states.add_metric([state], sum(p.state == state for p in procs))
        yield states
        exits = CounterMetricFamily("taskq_pool_process_exits", "Pool processes that exited, "
                                    "by reason.", labels=["reason"])
        counted = self.pool.slots.exits
        for reason in EXIT_REASONS:
            exits.add_metric([reason], counted.get(reason, 0))
        yield exits
        rss = GaugeMetricFamily("taskq_pool_process_rss_bytes",
                                "Resident memory of the pool process in each slot.",
                                labels=["slot"])
        for p in procs:
            rss.add_metric([str(p.slot)], rss_of(p.pid))
        yield rss

    def _redis(self) -> Iterator[Metric]:
        m = self.m
        secs = HistogramMetricFamily("taskq_redis_command_seconds",
                                     "Round trips of the node's Redis calls, by operation.",
                                     labels=["op"])
        errs = CounterMetricFamily("taskq_redis_errors", "Failed Redis calls, by operation.",
                                   labels=["op"])
        for op in REDIS_OPS:
            if op != "claim":  # a blocking claim's time is mostly waiting for work
                secs.add_metric([op], *m.redis_seconds[op].family_args())
            errs.add_metric([op], m.redis_errors[op])
        yield secs
        yield errs


def _per_queue(family: Any, queues: Sequence[str], values: Sequence[int]) -> Metric:
    for q, v in zip(queues, values, strict=True):
        family.add_metric([q], v)
    result: Metric = family
    return result


class Exposition:
    """One registry with the node's collector; :meth:`render` is the /metrics text."""

    def __init__(self, m: NodeMetrics, holdings: Holdings, pool: SupervisedPool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(m, holdings, pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
