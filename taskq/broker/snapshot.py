"""Read-only views of the whole cluster for the dashboard and the exporter: bounded,
pipelined queries, and the plain values they return.

Nothing here writes to Redis or decodes a payload beyond its JSON envelope: a pickled
payload is only ever described ("signed payload, N bytes"), and every argument or result
shown is cut to :data:`PREVIEW_LIMIT` bytes.

One :func:`take` is three pipelined round trips whose size depends only on the number of
queues and live nodes (both capped), never on how many tasks wait:

1. ``TIME``, the queue set, the live node ids (heartbeat within :data:`NODE_MAX_AGE`);
2. per queue ``XLEN`` + ``XINFO GROUPS`` + ``HGETALL stats`` + ``ZCARD delayed`` + ``XLEN
   dead``; per node its heartbeat hash;
3. per queue with waiting tasks, the first entry past the group's last-delivered id
   (``XRANGE (id + COUNT 1``): its id is its enqueue time on Redis's clock.

The page reads (:func:`dead_page`, :func:`delayed_page`) are cursor-paginated, and a task
lookup reads at most :data:`LOOKUP_SCAN` entries of each place a task can be.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from taskq.broker.keys import GROUP, NODES_KEY, QUEUES_KEY, QueueKeys, node_key
from taskq.broker.nodes import NODE_MAX_AGE
from taskq.message import Entry
from taskq.outcome import DEAD_LETTER_ERROR

MAX_QUEUES = 200
"""Queues one snapshot covers (sorted by name); past it the snapshot says it is truncated."""
MAX_NODES = 200
PREVIEW_LIMIT = 2048
"""Bytes of task arguments or results any view shows."""
LOOKUP_SCAN = 2000
"""Most entries a task lookup reads from each of a queue's stream, delayed set and dead letters."""
PAGE_MAX = 200

STAT_FIELDS = ("enqueued", "done", "failed", "retried", "dead", "suppressed")


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int
    """Waiting, not yet claimed by any node."""
    in_flight: int
    """Claimed and not yet reported (the group's pending list)."""
    lag: int
    """The consumer group's lag (Redis 7 reports it; else entries past the last delivered)."""
    delayed: int
    dead: int
    oldest_age: float | None
    """Seconds the oldest waiting task has waited, on Redis's clock (None: nothing waits)."""
    counters: dict[str, int] = field(default_factory=dict)
    """The queue's stats hash: enqueued, done, failed, retried, dead, suppressed."""


@dataclass(frozen=True)
class NodeInfo:
    id: str
    host: str
    pid: int
    procs: int
    queues: list[str]
    processed: int
    failed: int
    in_flight: int
    heartbeat_age: float
    procs_table: list[dict[str, Any]] | None
    """The pool's processes as the node publishes them (None: this node does not)."""


@dataclass(frozen=True)
class Snapshot:
    time: float
    """Redis's clock (epoch seconds) when the snapshot was taken."""
    queues: list[QueueStats]
    nodes: list[NodeInfo]
    nodes_live: int
    truncated: bool = False


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: bytes | str) -> int:
    return _int(_text(entry_id).split("-", 1)[0])


def preview(data: Any, limit: int = PREVIEW_LIMIT) -> str:
    """``data`` as JSON text (or as is, for text), cut to ``limit`` bytes."""
    raw = data.encode() if isinstance(data, str) else orjson.dumps(data, default=str)
    if len(raw) <= limit:
        return raw.decode(errors="replace")
    return raw[:limit].decode(errors="ignore") + f"… ({len(raw)} bytes)"


# -- the periodic snapshot -------------------------------------------------------------


def take(client: redis.Redis) -> Snapshot:
    """Every queue's numbers and every live node, in three pipelined round trips."""
    cutoff_ms = int((time.time() - NODE_MAX_AGE) * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.smembers(QUEUES_KEY)
    pipe.zrangebyscore(NODES_KEY, cutoff_ms, "+inf", start=0, num=MAX_NODES)
    pipe.zcount(NODES_KEY, cutoff_ms, "+inf")
    (secs, micros), members, node_ids, nodes_live = pipe.execute()
    now = int(secs) + int(micros) / 1e6
    names = sorted(_text(m) for m in members)
    truncated = len(names) > MAX_QUEUES
    names = names[:MAX_QUEUES]

    pipe = client.pipeline(transaction=False)
    for name in names:
        keys = QueueKeys(name)
        pipe.xlen(keys.stream)
        pipe.xinfo_groups(keys.stream)
        pipe.hgetall(keys.stats)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.dead)
    for node_id in node_ids:
        pipe.hgetall(node_key(_text(node_id)))
    replies = pipe.execute(raise_on_error=False)

    queues, cursors = [], {}
    for i, name in enumerate(names):
        length, groups, stats, delayed, dead = replies[i * 5:i * 5 + 5]
        group = _group(groups)
        in_flight = _int(group.get("pending"))
        length = _int(length)
        depth = max(0, length - in_flight)
        lag = group.get("lag")
        counters = {_text(k): _int(v) for k, v in stats.items()} if isinstance(stats, dict) else {}
        queues.append(QueueStats(name, depth, in_flight, depth if lag is None else _int(lag),
                                 _int(delayed), _int(dead), None, counters))
        if depth:
            cursors[i] = _text(group.get("last-delivered-id") or "0-0")
    nodes = [_node(raw, now) for raw in replies[len(names) * 5:] if isinstance(raw, dict) and raw]

    if cursors:
        pipe = client.pipeline(transaction=False)
        for i, last in cursors.items():
            start = "-" if last in ("0-0", "0") else f"({last}"
            pipe.xrange(QueueKeys(names[i]).stream, start, "+", count=1)
        for i, rows in zip(cursors, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(rows, list) and rows:
                age = max(0.0, now - _id_ms(rows[0][0]) / 1000)
                q = queues[i]
                queues[i] = QueueStats(q.name, q.depth, q.in_flight, q.lag, q.delayed, q.dead,
                                       age, q.counters)
    return Snapshot(now, queues, nodes, _int(nodes_live), truncated)


def _group(groups: Any) -> dict[str, Any]:
    """The ``workers`` group of an ``XINFO GROUPS`` reply ({} if the stream has none)."""
    if not isinstance(groups, list):
        return {}
    for g in groups:
        if isinstance(g, dict) and _text(g.get("name", b"")) == GROUP:
            return g
    return {}


def _node(raw: dict[bytes, bytes], now: float) -> NodeInfo:
    h = {_text(k): _text(v) for k, v in raw.items()}
    table: list[dict[str, Any]] | None = None
    if "procs_table" in h:
        try:
            parsed = orjson.loads(h["procs_table"])
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            table = [_proc_row(row) for row in parsed if isinstance(row, dict)]
    return NodeInfo(
        id=h.get("id", "?"), host=h.get("host", "?"), pid=_int(h.get("pid")),
        procs=_int(h.get("procs")), queues=[q for q in h.get("queues", "").split(",") if q],
        processed=_int(h.get("processed")), failed=_int(h.get("failed")),
        in_flight=_int(h.get("in_flight")),
        heartbeat_age=max(0.0, now - _int(h.get("seen")) / 1000),
        procs_table=table,
    )


def _proc_row(row: dict[str, Any]) -> dict[str, Any]:
    """A process row with its free-text fields cut to size: the node writes it, we show it."""
    return {k: preview(v, 256) if isinstance(v, str) and len(v) > 256 else v
            for k, v in row.items()}


# -- envelopes, described without running or unpickling anything --------------------------


def describe(body: bytes) -> dict[str, Any]:
    """Task id, name and an argument preview of an envelope; a pickled payload is only
    measured, never decoded."""
    try:
        env = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"task_id": "?", "task": "?", "args": f"unreadable envelope, {len(body)} bytes"}
    if not isinstance(env, dict):
        return {"task_id": "?", "task": "?", "args": f"unreadable envelope, {len(body)} bytes"}
    payload = env.get("p")
    if isinstance(payload, str):
        size = len(payload) * 3 // 4 - len(payload) + len(payload.rstrip("="))
        args = f"signed payload, {size} bytes"
    else:
        args = preview({"args": env.get("a", []), "kwargs": env.get("k", {})})
    return {"task_id": _text(env.get("id", "?")), "task": _text(env.get("t") or "(pickled)"),
            "args": args}


def _packed(packed: bytes) -> tuple[int, dict[str, Any]]:
    try:
        entry = Entry.unpack(packed)
    except ValueError:
        return 0, describe(b"")
    return entry.attempt, describe(entry.body)


# -- paginated reads -----------------------------------------------------------------------


def dead_page(client: redis.Redis, queue: str, before: str | None = None,
              count: int = 50) -> tuple[list[dict[str, Any]], str | None]:
    """Dead letters newest first, ``count`` of them older than ``before`` (a dead-letter id);
    returns them and the cursor of the next page (None: no more)."""
    count = max(1, min(count, PAGE_MAX))
    start = f"({before}" if before else "+"
    rows: Any = client.xrevrange(QueueKeys(queue).dead, start, "-", count=count)
    out = []
    for dead_id, fields in rows:
        f = {_text(k): v for k, v in fields.items()}
        attempts, env = _packed(f.get("packed", b""))
        err_type, message, trace = _error(f.get("error", b""))
        out.append({"id": _text(dead_id), **env, "reason": _text(f.get("reason", b"")),
                    "error_type": err_type, "message": preview(message),
                    "traceback": preview(trace, 8 * PREVIEW_LIMIT), "attempts": attempts,
                    "node": _text(f.get("node", b"")), "at": _int(f.get("at")) / 1000})
    cursor = out[-1]["id"] if len(out) == count else None
    return out, cursor


def _error(raw: bytes) -> tuple[str, str, str]:
    try:
        outcome = orjson.loads(raw)
        err = outcome.get("e") or ["", "", ""]
        return _text(err[0]), _text(err[1]), _text(err[2])
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return "", "", ""


def delayed_page(client: redis.Redis, queue: str, offset: int = 0,
                 count: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Retries waiting out their backoff, soonest due first; and how many there are."""
    count = max(1, min(count, PAGE_MAX))
    offset = max(0, offset)
    pipe = client.pipeline(transaction=False)
    pipe.zrange(QueueKeys(queue).delayed, offset, offset + count - 1, withscores=True)
    pipe.zcard(QueueKeys(queue).delayed)
    rows, total = pipe.execute()
    out = []
    for packed, due_ms in rows:
        attempt, env = _packed(packed)
        out.append({**env, "attempt": attempt, "due": float(due_ms) / 1000})
    return out, _int(total)


# -- lookups -----------------------------------------------------------------------------


def batch(client: redis.Redis, queues: Sequence[str], batch_id: str) -> dict[str, Any] | None:
    """A batch's progress, from the first of ``queues`` that has it (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.hgetall(QueueKeys(q).batch(batch_id))
    for q, raw in zip(queues, pipe.execute(), strict=True):
        if raw:
            h = {_text(k): _text(v) for k, v in raw.items()}
            total, done, failed = (_int(h.get(k)) for k in ("total", "done", "failed"))
            return {"id": batch_id, "queue": q, "total": total, "done": done, "failed": failed,
                    "pending": max(0, total - done - failed)}
    return None


def lookup(client: redis.Redis, queues: Sequence[str], task_id: str) -> dict[str, Any]:
    """Where a task is: its stored outcome, or queued / in flight (on which node, for how
    long) / waiting to retry / dead-lettered; "unknown" if none of the bounded reads saw it."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.get(QueueKeys(q).result(task_id))
    for q, raw in zip(queues, pipe.execute(), strict=True):
        if raw is not None:
            return _stored(q, task_id, raw)
    prefix = b'{"id":' + orjson.dumps(task_id)
    for q in queues:
        found = _in_stream(client, q, prefix, task_id)
        if found is not None:
            return found
    return {"id": task_id, "state": "unknown",
            "detail": f"no stored outcome, and not among the first {LOOKUP_SCAN} entries of any "
                      "queue, retry or dead letter (unknown id, fire-and-forget, or expired)"}


def _stored(queue: str, task_id: str, raw: bytes) -> dict[str, Any]:
    try:
        outcome = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"id": task_id, "queue": queue, "state": "stored", "detail": preview(_text(raw))}
    if outcome.get("ok"):
        return {"id": task_id, "queue": queue, "state": "done",
                "detail": preview(orjson.dumps(outcome.get("v")).decode())}
    err = outcome.get("e") or ["", "", ""]
    return {"id": task_id, "queue": queue, "state": "dead" if err[0] == DEAD_LETTER_ERROR else "failed",
            "detail": preview(f"{err[0]}: {err[1]}"), "traceback": preview(_text(err[2]), 8 * PREVIEW_LIMIT)}


def _in_stream(client: redis.Redis, queue: str, prefix: bytes, task_id: str) -> dict[str, Any] | None:
    keys = QueueKeys(queue)
    start, seen = "-", 0
    while seen < LOOKUP_SCAN:
        rows: Any = client.xrange(keys.stream, start, "+", count=500)
        for entry_id, fields in rows:
            if fields.get(b"m", b"").startswith(prefix):
                return _where(client, queue, task_id, entry_id)
        seen += len(rows)
        if len(rows) < 500:
            break
        start = "(" + _text(rows[-1][0])
    delayed: Any = client.zrange(keys.delayed, 0, LOOKUP_SCAN - 1, withscores=True)
    for packed, due_ms in delayed:
        if Entry.unpack(packed).body.startswith(prefix):
            return {"id": task_id, "queue": queue, "state": "delayed",
                    "detail": f"waiting to retry, due at {float(due_ms) / 1000:.3f}"}
    dead: Any = client.xrevrange(keys.dead, "+", "-", count=LOOKUP_SCAN)
    for dead_id, fields in dead:
        if Entry.unpack(fields.get(b"packed", b"0||")).body.startswith(prefix):
            return {"id": task_id, "queue": queue, "state": "dead", "dead_id": _text(dead_id),
                    "detail": f"dead-lettered: {_text(fields.get(b'reason', b''))}"}
    return None


def _where(client: redis.Redis, queue: str, task_id: str, entry_id: bytes) -> dict[str, Any]:
    try:
        pending: Any = client.xpending_range(QueueKeys(queue).stream, GROUP, min=entry_id,
                                             max=entry_id, count=1)
    except redis.ResponseError:  # no group yet: nothing claimed it
        pending = []
    if pending:
        node = _text(pending[0]["consumer"])
        since = _running_since(client, node, task_id)
        if since is not None:
            seconds = max(0.0, time.time() - since)
            detail = f"in flight on node {node} for {seconds:.1f} s"
        else:  # the lease renewal resets the idle time: it says when, not how long
            seconds = _int(pending[0]["time_since_delivered"]) / 1000
            detail = f"in flight on node {node} (lease renewed {seconds:.1f} s ago)"
        return {"id": task_id, "queue": queue, "state": "in_flight", "node": node,
                "seconds": seconds, "detail": detail}
    return {"id": task_id, "queue": queue, "state": "queued", "detail": "queued"}


def _running_since(client: redis.Redis, node: str, task_id: str) -> float | None:
    """When the node's process table says ``task_id`` started (None: not published)."""
    raw: Any = client.hget(node_key(node), "procs_table")
    try:
        table = orjson.loads(raw) if raw else []
    except orjson.JSONDecodeError:
        return None
    for row in table if isinstance(table, list) else ():
        if isinstance(row, dict) and row.get("task_id") == task_id:
            since = row.get("since")
            return float(since) if isinstance(since, (int, float)) else None
    return None
