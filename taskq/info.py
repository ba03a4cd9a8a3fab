"""``taskq info``: the cluster as one terminal page or one JSON object, from
:func:`taskq.broker.snapshot.take` (bounded, pipelined reads): each queue's numbers, its
oldest waiting task's age and done/failed rates (two snapshots apart), the live nodes and
the process table each publishes in its heartbeat."""

from __future__ import annotations

import dataclasses
from typing import Any

from taskq.broker.snapshot import Snapshot


def rates_between(a: Snapshot, b: Snapshot) -> dict[str, tuple[float, float]]:
    """done/s and failed/s per queue between two snapshots (Redis's clock)."""
    dt = max(b.time - a.time, 1e-3)
    before = {q.name: q.counters for q in a.queues}
    out = {}
    for q in b.queues:
        old = before.get(q.name, {})
        done, failed = (max(0, q.counters.get(k, 0) - old.get(k, 0)) / dt
                        for k in ("done", "failed"))
        out[q.name] = (done, failed)
    return out


def as_json(snap: Snapshot, rates: dict[str, tuple[float, float]]) -> dict[str, Any]:
    queues = []
    for q in snap.queues:
        row = dataclasses.asdict(q)
        if q.name in rates:
            row["done_rate"], row["failed_rate"] = rates[q.name]
        queues.append(row)
    return {"time": snap.time, "queues": queues, "nodes_live": snap.nodes_live,
            "nodes": [dataclasses.asdict(n) for n in snap.nodes]}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def as_text(snap: Snapshot, rates: dict[str, tuple[float, float]]) -> str:
    out: list[str] = []
    echo = out.append
    echo(f"{'queue':<20}{'queued':>10}{'in-flight':>11}{'delayed':>9}{'done':>10}"
               f"{'failed':>9}{'dead':>7}{'oldest':>9}{'done/s':>9}{'failed/s':>10}")
    for q in snap.queues:
        c = q.counters
        done_rate, failed_rate = (f"{r:.1f}" for r in rates[q.name]) if q.name in rates else "--"
        echo(f"{q.name:<20}{q.depth:>10}{q.in_flight:>11}{q.delayed:>9}{c.get('done', 0):>10}"
                   f"{c.get('failed', 0):>9}{q.dead:>7}{_age(q.oldest_age):>9}{done_rate:>9}"
                   f"{failed_rate:>10}")
    echo(f"\n{snap.nodes_live} live node(s)")
    for n in snap.nodes:
        echo(f"  {n.id}  procs={n.procs} queues={','.join(n.queues)} processed={n.processed} "
                   f"failed={n.failed} in-flight={n.in_flight} heartbeat={_age(n.heartbeat_age)}")
        if n.procs_table:
            echo(f"    {'slot':>4} {'pid':>7} {'state':<8} {'task':<24} {'task id':<34}"
                       f"{'for':>7} {'done':>8} {'rss MB':>7} {'restarts':>8}  last exit")
        for p in n.procs_table or ():
            since = p.get("since")
            running = _age(max(0.0, snap.time - since)) if isinstance(since, (int, float)) else "-"
            echo(f"    {p.get('slot', '?'):>4} {p.get('pid', '?'):>7} "
                       f"{p.get('state', '?')!s:<8} {str(p.get('task') or '-')[:24]:<24} "
                       f"{str(p.get('task_id') or '-')[:34]:<34}{running:>7} {p.get('done', 0):>8} "
                       f"{(p.get('rss') or 0) / 2**20:>7.1f} {p.get('restarts', 0):>8}  "
                       f"{p.get('last_exit') or '-'}")
    return "\n".join(out)
