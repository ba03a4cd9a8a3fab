"""The node's control channel and its side channel: what a node is told, and what its
tasks say while they run.

- Control: the node reads its stream ``taskq:node:<id>:ctl``
  (:mod:`taskq.broker.control`) with one blocking read kept outstanding, its socket
  waited on by the loop beside the claim's, so a message is handled within a loop turn
  at any load. ``{"cancel": task id, "entry": entry id, "queue": q}`` cancels a task the
  node holds: taken back if no process started it, else its process is killed and
  replaced (:meth:`taskq.node.pool.SupervisedPool.cancel`); the outcome is ``cancelled``.
  Tombstones cover the tasks cancelled while claimed by a node that died: they are
  checked when an entry is reclaimed (:meth:`NodeControl.screen`, one HMGET a batch).
- Progress: pool processes send ``taskq.progress(...)`` over their pipe; every
  :data:`PROGRESS_EVERY` seconds the node writes the latest of each running task to its
  progress key and its producer's inbox (:func:`taskq.broker.control.write_progress`),
  so a task costs at most one write per second however often it reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from taskq.broker import Broker
from taskq.broker.control import (
    ControlReader,
    SyncControlReader,
    cancelled_outcome,
    drop_control,
    tombstoned,
    write_progress,
)
from taskq.message import Entry, Report, Routing, routing_of
from taskq.node.holdings import Holdings, log_task
from taskq.node.pool import SupervisedPool

log = logging.getLogger("taskq.node")

PROGRESS_EVERY = 1.0
"""Seconds between two progress writes of the node (each carries every task's latest)."""
EARLY_SECONDS = 60.0
"""How long a cancel of an entry the node does not hold yet is remembered."""


def cancelled_report(entry: Entry, secret: bytes | None, why: str = "cancelled") -> Report:
    """The report of a cancelled task: signed for its task id if its entry was signed
    (a signing producer takes only signed outcomes)."""
    routing = routing_of(entry.body)
    task_id = routing.task_id if routing else "?"
    signed = secret if entry.signature else None
    return Report("cancelled", routing, cancelled_outcome(task_id, signed, why))


class NodeControl:
    """One node's control reader, cancel handling and progress writes."""

    def __init__(self, node_id: str, client: redis.Redis, brokers: Sequence[Broker],
                 holdings: Holdings, pool: SupervisedPool, *, url: str | None,
                 secret: bytes | None, progress_ttl: float) -> None:
        self.node_id, self.client, self.brokers = node_id, client, brokers
        self.holdings, self.pool, self.secret = holdings, pool, secret
        self.progress_ttl = progress_ttl
        self.reader: ControlReader | SyncControlReader = (
            ControlReader(url, node_id) if url is not None else SyncControlReader(client, node_id))
        self._queues = {b.queue: qi for qi, b in enumerate(brokers)}
        self._routing: dict[Any, Routing | None] = {}
        self._progress_at = 0.0
        self._early: dict[Any, float] = {}  # cancels of entries not seen yet: key -> when
        self.cancelled = 0

    def waitable(self) -> Any:
        return self.reader.waitable()

    def poll(self, now: float) -> None:
        """Handle the control messages that arrived; write progress if it is due."""
        for msg in self.reader.poll():
            if "cancel" in msg:
                self._cancel(msg)
            else:
                log.warning("ignoring an unknown control message: %r", str(msg)[:200])
        if now - self._progress_at >= PROGRESS_EVERY:
            self._progress_at = now
            self._write_progress()

    def _cancel(self, msg: dict[str, str]) -> None:
        qi = self._queues.get(msg.get("queue", ""))
        if qi is None or "entry" not in msg:
            return
        key = (qi, msg["entry"].encode())
        if key not in self.holdings.held:
            # Finished meanwhile, or claimed and not read yet: remembered a while for
            # :meth:`early` (the claim's answer may be in the same loop turn).
            now = time.monotonic()
            self._early = {k: t for k, t in self._early.items() if now - t < EARLY_SECONDS}
            self._early[key] = now
            return
        what = self.pool.cancel(key)
        if what is not None:
            self.cancelled += 1
            log.info("task %s cancelled (%s)", msg["cancel"], what,
                     extra={"task_id": msg["cancel"], "event": "cancelled"})

    def early(self, qi: int, entries: Sequence[Entry]) -> list[Entry]:
        """Claimed entries less those whose cancel came before the claim was read."""
        if not self._early:
            return list(entries)
        keep = []
        for entry in entries:
            if self._early.pop((qi, entry.entry_id), None) is None:
                keep.append(entry)
            else:
                self.holdings.record(qi, entry.entry_id, cancelled_report(entry, self.secret))
        return keep

    def screen(self, qi: int, entries: Sequence[Entry]) -> list[Entry]:
        """Reclaimed entries less those cancelled meanwhile (recorded as cancelled)."""
        if not entries:
            return []
        routings = [routing_of(e.body) for e in entries]
        ids = [r.task_id if r else "" for r in routings]
        dead = tombstoned(self.client, self.brokers[qi].keys, ids)
        keep = []
        for entry, cancelled in zip(entries, dead, strict=True):
            if not cancelled:
                keep.append(entry)
                continue
            self.holdings.held.pop((qi, entry.entry_id), None)
            self.holdings.record(qi, entry.entry_id, cancelled_report(entry, self.secret))
            log_task(entry, "cancelled", "it was cancelled while its node was lost")
        return keep

    def _write_progress(self) -> None:
        latest = self.pool.take_progress()
        items = []
        for key, (done, total, info, at) in latest.items():
            entry = self.holdings.held.get(key)
            if entry is None:
                continue  # finished meanwhile: its outcome says the rest
            if key not in self._routing:
                self._routing[key] = routing_of(entry.body)
            routing = self._routing[key]
            if routing is None:
                continue
            blob = orjson.dumps({"id": routing.task_id, "done": done, "total": total,
                                 "info": info, "at": at}, default=str)
            items.append((self.brokers[key[0]].keys, routing, blob))
        for key in [k for k in self._routing if k not in self.holdings.held]:
            del self._routing[key]
        write_progress(self.client, items, self.progress_ttl)

    def drop(self) -> None:
        """Abandon the outstanding read (Redis went away); the next poll reads again."""
        self.reader.drop()

    def close(self) -> None:
        self.reader.close()
        drop_control(self.client, self.node_id)
