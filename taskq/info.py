"""``taskq info``: the cluster as one terminal page or one JSON object, from
:func:`taskq.broker.snapshot.take` (bounded, pipelined reads): each queue's numbers, its
oldest waiting task's age and done/failed rates (two snapshots apart), the live nodes and
the process table each publishes in its heartbeat.

What the columns mean: ``done`` finished with a result; ``failed`` finished with the
task's own error (dead letters are *not* counted again there, though the stats hash's
``failed`` counter includes them); ``dead`` is in the dead-letter stream now (``taskq dead
list``); ``cancelled`` were cancelled (``Client.cancel``, ``taskq cancel``), queued or
running, and count as neither done nor failed. A node is live while its last heartbeat is under
:data:`~taskq.broker.nodes.NODE_MAX_AGE` old (three heartbeats); its age is shown."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from taskq.broker.snapshot import Snapshot


def failed(counters: dict[str, int]) -> int:
    """Tasks that failed with their own error: the ``failed`` counter counts dead letters
    too (complete.lua increments both), shown in their own column."""
    return max(0, counters.get("failed", 0) - counters.get("dead", 0))


def only_queues(snap: Snapshot, names: Sequence[str]) -> Snapshot:
    """``snap`` cut to the queues ``names`` and the nodes serving any of them."""
    wanted = set(names)
    nodes = [n for n in snap.nodes if wanted & set(n.queues)]
    return dataclasses.replace(snap, queues=[q for q in snap.queues if q.name in wanted],
                               nodes=nodes, nodes_live=len(nodes))


def rates_between(a: Snapshot, b: Snapshot) -> dict[str, tuple[float, float]]:
    """done/s and failed/s (dead letters apart) per queue between two snapshots (Redis's
    clock)."""
    dt = max(b.time - a.time, 1e-3)
    before = {q.name: q.counters for q in a.queues}
    out = {}
    for q in b.queues:
        old = before.get(q.name, {})
        done = max(0, q.counters.get("done", 0) - old.get("done", 0)) / dt
        out[q.name] = (done, max(0, failed(q.counters) - failed(old)) / dt)
    return out


def as_json(snap: Snapshot, rates: dict[str, tuple[float, float]]) -> dict[str, Any]:
    queues = []
    for q in snap.queues:
        row = dataclasses.asdict(q)
        row["failed"] = failed(q.counters)  # dead letters apart; counters stay raw
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
    width = max([len("queue"), *(len(q.name) for q in snap.queues)]) + 2  # names are <= 100
    cancels = any(q.counters.get("cancelled") for q in snap.queues)  # a column once there are
    echo(f"{'queue':<{width}}{'queued':>10}{'in-flight':>11}{'delayed':>9}{'done':>10}"
         f"{'failed':>9}{'dead':>7}{'oldest':>9}{'done/s':>9}{'failed/s':>10}"
         + (f"{'cancelled':>11}" if cancels else ""))
    for q in snap.queues:
        c = q.counters
        done_rate, failed_rate = (f"{r:.1f}" for r in rates[q.name]) if q.name in rates else "--"
        echo(f"{q.name:<{width}}{q.depth:>10}{q.in_flight:>11}{q.delayed:>9}{c.get('done', 0):>10}"
             f"{failed(c):>9}{q.dead:>7}{_age(q.oldest_age):>9}{done_rate:>9}"
             f"{failed_rate:>10}" + (f"{c.get('cancelled', 0):>11}" if cancels else ""))
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
