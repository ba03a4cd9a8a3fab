"""Every Redis key taskq uses, and nothing else: the one place a key name is spelled.

Per queue ``q`` every key carries the hash tag ``{q}`` (Redis Cluster ready: a queue's
keys live in one slot, so one script may touch them all).

==============================  ===========================================================
``taskq:{q}:stream``            the queue (stream, consumer group ``workers``; pending
                                entries are the in-flight set, their idle time the lease)
``taskq:{q}:stats``             hash of counters: enqueued, done, failed, retried, dead, …
``taskq:{q}:delayed``           sorted set of retries waiting out their backoff, and of
                                tasks applied with a delay or an eta (score = due ms)
``taskq:{q}:dead``              dead-letter stream (packed entry, reason, error)
``taskq:{q}:result:<task>``     a task's outcome JSON, with a TTL
``taskq:{q}:inbox:<client>``    a producer's reply list (JSON arrays of outcomes)
``taskq:{q}:batch:<id>``        hash: total, done, failed (+ reduce hint for the CLI)
``taskq:{q}:batch:<id>:events`` list pushed once when a batch is complete
``taskq:{q}:cancelled``         hash of tombstones: task id → 1, for a task cancelled while
                                claimed (checked when a node reclaims its entry)
``taskq:{q}:progress:<task>``   a running task's last progress JSON, with a TTL
``taskq:{q}:dedup:<key>``       a dedup key's task: ``<task id>|<ttl ms>|<entry id>``
``taskq:{q}:dedupw:<key>``      clients waiting for that task besides its producer (set)
``taskq:{q}:sched:lock``        the periodic scheduler's lease on this queue (node id)
``taskq:{q}:sched:last``        hash: schedule name → last run enqueued (scheduled ms)
``taskq:queues``                set of queue names seen (for ``taskq info``)
``taskq:nodes``                 sorted set node id → last heartbeat (ms)
``taskq:node:<id>``             hash describing a node, with a TTL
``taskq:node:<id>:ctl``         the node's control stream (cancel a task it holds, …)
``taskq:{shared}:…``            taskq.Value / taskq.Lock (see taskq.compat.shared)
==============================  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
"""The one consumer group of every queue stream: its pending list is the in-flight set."""
QUEUES_KEY = "taskq:queues"
NODES_KEY = "taskq:nodes"
SHARED_PREFIX = "taskq:{shared}:"


DEDUP_ID = "dd-"
"""Task ids of dedup applies start ``dd-<hex of the key>-``: complete.lua finds the key there."""


def dedup_task_id(key: str, unique: str) -> str:
    return f"{DEDUP_ID}{key.encode().hex()}-{unique}"


def dedup_key_of(task_id: str) -> str | None:
    """The dedup key a task id holds (None for an ordinary task)."""
    if not task_id.startswith(DEDUP_ID):
        return None
    hexed = task_id[len(DEDUP_ID):].partition("-")[0]
    try:
        return bytes.fromhex(hexed).decode()
    except ValueError:  # not ours: an explicit id that merely starts alike
        return None


def node_key(node_id: str) -> str:
    return f"taskq:node:{node_id}"


def node_control(node_id: str) -> str:
    """The node's control stream: messages to one node (read in its loop)."""
    return f"taskq:node:{node_id}:ctl"


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue."""

    queue: str

    @property
    def prefix(self) -> str:
        return f"taskq:{{{self.queue}}}:"

    @property
    def stream(self) -> str:
        return self.prefix + "stream"

    @property
    def stats(self) -> str:
        return self.prefix + "stats"

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}result:{task_id}"

    def inbox(self, client_id: str) -> str:
        return f"{self.prefix}inbox:{client_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def batch_events(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}:events"

    def dedup(self, key: str) -> str:
        return f"{self.prefix}dedup:{key}"

    def dedup_waiters(self, key: str) -> str:
        return f"{self.prefix}dedupw:{key}"

    @property
    def sched_lock(self) -> str:
        return self.prefix + "sched:lock"

    @property
    def sched_last(self) -> str:
        return self.prefix + "sched:last"

    @property
    def cancelled(self) -> str:
        return self.prefix + "cancelled"

    def progress(self, task_id: str) -> str:
        return f"{self.prefix}progress:{task_id}"
