"""Scheduling a queue's work in time: delayed tasks, dedup keys, and the periodic
scheduler's lease and fenced runs. Redis calls only (scripts beside this module); what
is due when is decided by the callers (:mod:`taskq.client`, :mod:`taskq.node.scheduler`).

* Delayed (``apply(delay=/eta=)``): the entry waits in ``taskq:{q}:delayed`` (the retry
  set: promote.lua, run by every node every 0.25 s, moves it to the stream when due).
* Dedup (``apply(dedup_key=)``): dedup_enqueue.lua checks the key and queues in one step;
  complete.lua releases it (see :func:`taskq.broker.keys.dedup_task_id`).
* Periodic: one lease per queue (sched_lease.lua); each run is queued by
  sched_enqueue.lua, which checks the lease and records the run in the same step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from taskq.broker.keys import QueueKeys
from taskq.broker.queue import Broker, Signed, load_script

DEDUP_HOLD = 7 * 24 * 3600.0
"""Seconds a dedup key lives at most while its task is queued or running: a task Redis
lost (a restart without its data) never holds its key for ever."""

QUEUED, ALREADY, NOT_HOLDER = 1, 0, -1
"""What :meth:`Scheduling.enqueue_run` did."""


class DedupRecord(NamedTuple):
    """What a dedup key names: the task, its TTL after completion, its stream entry."""

    created: bool
    """True if this call queued the task, False if the key already named one."""
    task_id: str
    ttl: float
    entry_id: bytes | None
    """None while the task waits in the delayed set."""


def packed(envelope: Signed, attempt: int = 1) -> bytes:
    """The delayed-set member of an envelope: ``<attempt>|<sig>|<body>``."""
    body, signature = envelope
    return b"%d|%s|%s" % (attempt, signature or b"", body)


class Scheduling:
    """The scheduling scripts of one queue, on its broker's client."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.keys: QueueKeys = broker.keys
        client, package = broker.client, __package__
        self._delayed = load_script(client, package, "enqueue_delayed")
        self._dedup = load_script(client, package, "dedup_enqueue")
        self._lease = load_script(client, package, "sched_lease")
        self._run = load_script(client, package, "sched_enqueue")

    # -- producer side ----------------------------------------------------------------

    def enqueue_delayed(self, envelopes: Sequence[Signed], due_ms: int,
                        batch: tuple[str, float, dict[str, str]] | None = None) -> int:
        """Queue every envelope in the delayed set, due at ``due_ms`` (unix ms), counted
        as enqueued in the same step; with ``batch`` its hash is created first."""
        if batch is not None:
            batch_id, ttl, extra = batch
            key = self.keys.batch(batch_id)
            pipe = self.broker.client.pipeline(transaction=False)
            fields: dict[str, str | int] = {"total": len(envelopes), "done": 0, "failed": 0,
                                            **extra}
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, int(ttl * 1000))
            pipe.execute()
        args: list[Any] = []
        for envelope in envelopes:
            args += [due_ms, packed(envelope)]
        return int(self._delayed(keys=[self.keys.delayed, self.keys.stats], args=args))

    def dedup_enqueue(self, key: str, task_id: str, envelope: Signed, ttl: float | None,
                      due_ms: int | None, waiter: str) -> DedupRecord:
        """Queue ``envelope`` as ``task_id`` unless ``key`` names a task already; then
        ``waiter`` (a client id) gets that task's outcome pushed to its inbox too."""
        keys = self.keys
        body, signature = envelope
        wait = max(0.0, (due_ms or 0) / 1000 - time.time())  # held while it waits too
        created, record = self._dedup(
            keys=[keys.stream, keys.stats, keys.delayed, keys.dedup(key), keys.dedup_waiters(key)],
            args=[task_id, body, signature or b"", int((ttl or 0) * 1000),
                  int((DEDUP_HOLD + wait) * 1000), due_ms or 0,
                  waiter])
        tid, keep, entry = bytes(record).split(b"|", 2)
        return DedupRecord(bool(created), tid.decode(), int(keep) / 1000, entry or None)

    # -- the periodic scheduler's lease and runs --------------------------------------------

    def hold(self, node_id: str, lease: float) -> bool:
        """Take or renew the scheduler lease on this queue; True if ``node_id`` holds it."""
        return bool(self._lease(keys=[self.keys.sched_lock],
                                args=[node_id, max(1, int(lease * 1000))]))

    def release(self, node_id: str) -> None:
        """Give the lease up (if held by ``node_id``): a standby takes over at once."""
        self._lease(keys=[self.keys.sched_lock], args=[node_id, 0])

    def last_runs(self) -> dict[str, int]:
        """Schedule name → the scheduled time (ms) of its last queued run."""
        raw: Any = self.broker.client.hgetall(self.keys.sched_last)
        return {k.decode(): int(v) for k, v in raw.items()}

    def start_at(self, node_id: str, name: str, at_ms: int) -> int:
        """Record ``at_ms`` as the starting point of a schedule that has none yet (its
        first run is the next one after it). NOT_HOLDER if the lease is gone."""
        keys = self.keys
        return int(self._run(keys=[keys.sched_lock, keys.sched_last, keys.stream, keys.stats],
                             args=[node_id, name, at_ms, b"", b""]))

    def enqueue_run(self, node_id: str, name: str, at_ms: int, envelope: Signed) -> int:
        """Queue the run of ``name`` scheduled at ``at_ms``, fenced: QUEUED, ALREADY (a
        run at or after it is recorded) or NOT_HOLDER (the lease is gone: nothing done)."""
        keys = self.keys
        body, signature = envelope
        return int(self._run(keys=[keys.sched_lock, keys.sched_last, keys.stream, keys.stats],
                             args=[node_id, name, at_ms, body, signature or b""]))
