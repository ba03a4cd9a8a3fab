"""The cluster-wide registry: queue names seen, and node heartbeats.

These keys (``taskq:queues``, ``taskq:nodes``, ``taskq:node:<id>``) belong to no queue,
so on a Redis Cluster they live in slots of their own: every call here is a single-key
command there (a pipeline of them only on a single server)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import redis

from taskq.broker.cluster import is_cluster
from taskq.broker.keys import NODES_KEY, QUEUES_KEY, node_key


def all_queues(client: redis.Redis) -> list[str]:
    members: Any = client.smembers(QUEUES_KEY)
    return sorted(q.decode() for q in members)


def heartbeat(client: redis.Redis, node_id: str, fields: Mapping[str, str | int],
              ttl: float) -> None:
    """Say this node is alive (one pipelined round trip), with what it reports of itself."""
    now_ms = int(time.time() * 1000)
    mapping: dict[str, str | int] = {**fields, "id": node_id, "seen": now_ms}
    # On a cluster the two keys live in different slots: single-key commands there.
    pipe: Any = client if is_cluster(client) else client.pipeline(transaction=False)
    pipe.zadd(NODES_KEY, {node_id: now_ms})
    pipe.hset(node_key(node_id), mapping=mapping)
    pipe.expire(node_key(node_id), max(1, int(ttl)))
    if pipe is not client:
        pipe.execute()


def remove_node(client: redis.Redis, node_id: str) -> None:
    """Best effort, on the way out: the heartbeat would expire by itself anyway."""
    with contextlib.suppress(redis.RedisError):
        client.zrem(NODES_KEY, node_id)
        client.delete(node_key(node_id))


NODE_MAX_AGE = 15.0
"""Seconds since its last heartbeat after which a node no longer counts as live: three
heartbeats (a node beats every 5 s), so a SIGKILLed node is gone from every view soon."""


def live_nodes(client: redis.Redis, max_age: float = NODE_MAX_AGE) -> list[dict[str, str]]:
    cutoff = int((time.time() - max_age) * 1000)
    ids: Any = client.zrangebyscore(NODES_KEY, cutoff, "+inf")
    nodes = []
    for node_id in ids:
        raw: Any = client.hgetall(node_key(node_id.decode()))
        if raw:
            nodes.append({k.decode(): v.decode() for k, v in raw.items()})
    return nodes


def procs_serving(client: redis.Redis, queue: str | None = None) -> int:
    """Pool processes of the live nodes (serving ``queue``, if given); 0 if none."""
    return sum(int(n.get("procs", 0)) for n in live_nodes(client)
               if queue is None or queue in n.get("queues", "").split(","))
