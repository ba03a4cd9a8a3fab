"""What a node holds under its lease, and the Redis calls that renew, settle or return it.

An entry is *held* from the moment a claim or a reclaim delivers it until its outcome
is recorded; an outcome is *unreported* until a completion call has applied it. Both
count as this node's: their leases are renewed, and nothing is acknowledged before its
outcome is recorded in Redis. *Suspects* are reclaimed entries that already lost two
nodes (possible poison): the node holds at most one at a time.

With a :class:`~taskq.broker.reporting.Completion` per queue, a completion call is sent
and its answer collected later (:meth:`Holdings.collect`), at most one per queue at a
time; the outcomes it carries stay unreported (and leased) until it is answered, and an
outage abandons it (they are sent again). Without (in process, or when every completion
must wait for replicas) each call is a blocking round trip.

Only the best-effort calls made on the way out (:meth:`Holdings.settle`,
:meth:`Holdings.give_back`) catch Redis errors; for the others the node loop decides what
an outage means.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from taskq.broker import Broker
from taskq.broker.reporting import Completion
from taskq.errors import BrokerError
from taskq.message import Entry, Report, dead_letter
from taskq.node.exits import describe

log = logging.getLogger("taskq.node")

JobKey = tuple[int, bytes]  # (queue index, entry id)
Unreported = tuple[int, bytes, Report]  # (queue index, entry id, report)
OnReported = Callable[[int, Sequence[tuple[bytes, Report]], int], None]
"""Told after each completion call: (queue index, its (entry id, report) pairs, how many
were suppressed)."""

SUSPECT_DELIVERIES = 3
"""A reclaimed entry delivered this often already lost two nodes: it may be poison, so a
node holds at most one such suspect at a time and reclaims nothing else meanwhile."""


class Holdings:
    """Held entries, unreported outcomes and suspects of one node, over its brokers."""

    def __init__(self, brokers: Sequence[Broker], node_id: str,
                 on_reported: OnReported | None = None, secret: bytes | None = None,
                 completions: Sequence[Completion] | None = None) -> None:
        self.brokers = brokers
        self.completions = completions  # one per queue; None: blocking completion calls
        self._sent: dict[int, list[Unreported]] = {}  # queue index -> in the call outstanding
        self.secret = secret  # signs the dead letters of entries the producer signed
        self.node_id = node_id
        self.on_reported = on_reported
        self.held: dict[JobKey, Entry] = {}
        self.unreported: list[Unreported] = []  # (queue index, entry id, report)
        self.suspects: set[JobKey] = set()

    # -- bookkeeping ------------------------------------------------------------------

    def take(self, qi: int, entry: Entry) -> bool:
        """Hold ``entry``; False if it is already held (a reclaim of our own stale entry)."""
        key = (qi, entry.entry_id)
        if key in self.held:
            return False
        self.held[key] = entry
        return True

    def release(self, key: JobKey) -> Entry | None:
        """Stop holding ``key``; its entry, or None if it was not held."""
        return self.held.pop(key, None)

    def record(self, qi: int, entry_id: bytes, report: Report) -> None:
        self.unreported.append((qi, entry_id, report))

    def dead(self, qi: int, entry: Entry, reason: str) -> None:
        """Dead-letter a held entry: never run, reported with its reason."""
        self.held.pop((qi, entry.entry_id), None)
        report = dead_letter(entry._replace(queue=self.brokers[qi].queue), reason, self.secret)
        self.record(qi, entry.entry_id, report)
        task_id = report.routing.task_id if report.routing else "?"
        log.warning("task %s (entry %s) dead-lettered: %s", task_id, entry.entry_id.decode(),
                    reason, extra={"task_id": task_id, "event": "dead-lettered"})

    # -- Redis ------------------------------------------------------------------------

    def flush(self, result_ttl: float, *, wait: bool = False) -> None:
        """One completion call per queue for everything finished and not in a call yet:
        sent, to be collected, with completions (unless ``wait``); else applied now. Kept
        on failure."""
        if not self.unreported:
            return
        by_queue: dict[int, list[Unreported]] = {}
        for u in self.unreported:
            if u[0] not in self._sent:  # one call per queue at a time: order is kept
                by_queue.setdefault(u[0], []).append(u)
        for qi, items in by_queue.items():
            if self.completions is None or wait:
                self._complete_now(qi, items, result_ttl)
            else:
                self.completions[qi].send(self.node_id, _pairs(items), result_ttl)
                self._sent[qi] = items

    def waitables(self) -> list[Any]:
        """The sockets of the completion calls outstanding."""
        assert self.completions is not None or not self._sent
        return [self.completions[qi].waitable() for qi in self._sent]  # type: ignore[index]

    def collect(self, result_ttl: float, *, wait: bool = False) -> None:
        """Take the answers of the completion calls that are in (all of them, waiting for
        each, with ``wait``). A server that lost its scripts gets the call again through
        the broker (which loads complete.lua)."""
        if not self._sent:
            return
        assert self.completions is not None
        for qi, items in list(self._sent.items()):
            completion = self.completions[qi]
            if not wait and not completion.ready():
                continue
            try:
                _, suppressed = completion.read()
            except redis.exceptions.NoScriptError:  # nothing applied: again, loading it
                del self._sent[qi]
                self._complete_now(qi, items, result_ttl)
                continue
            except BaseException:
                self.abandon()
                raise
            del self._sent[qi]
            self._reported(qi, items, suppressed)

    def abandon(self) -> None:
        """Redis went away: drop the calls outstanding; their outcomes stay unreported and
        are sent again (one that was applied is then suppressed: its entries are gone)."""
        for qi in self._sent:
            self.completions[qi].drop()  # type: ignore[index]
        self._sent.clear()

    def close(self) -> None:
        """Drop the calls outstanding and release their connections."""
        self.abandon()
        for completion in self.completions or ():
            completion.close()

    def _complete_now(self, qi: int, items: list[Unreported], result_ttl: float) -> None:
        """One blocking completion call for ``items`` of queue ``qi``."""
        _, suppressed = self.brokers[qi].complete(self.node_id, _pairs(items), result_ttl)
        self._reported(qi, items, suppressed)

    def _reported(self, qi: int, items: list[Unreported], suppressed: int) -> None:
        broker = self.brokers[qi]
        if suppressed:
            log.warning("lease lost: %d late report(s) from %s suppressed, their lease had "
                        "passed to another node", suppressed, broker.queue,
                        extra={"queue": broker.queue, "suppressed": suppressed})
        if self.on_reported is not None:
            self.on_reported(qi, _pairs(items), suppressed)
        done = {id(u) for u in items}
        self.unreported = [u for u in self.unreported if id(u) not in done]

    def renew(self) -> None:
        """Renew the lease of what this node holds: running or queued in the pool, or
        finished and not yet reported. Entries pending under this node that it does not
        know (delivered to a claim it had to abandon when Redis went away) are left to
        expire, so that any node, this one included, reclaims and runs them."""
        ids: list[list[bytes]] = [[] for _ in self.brokers]
        for qi, entry_id in self.held:
            ids[qi].append(entry_id)
        for qi, entry_id, _ in self.unreported:
            ids[qi].append(entry_id)
        for broker, entry_ids in zip(self.brokers, ids, strict=True):
            broker.renew(self.node_id, entry_ids)

    def reclaim(self, lease: float, room: int,
                max_deliveries: int) -> tuple[list[tuple[int, list[Entry]]], bool]:
        """Take over expired entries: (entries to run, by queue; whether a full batch came,
        so there may be more). Those past ``max_deliveries`` are dead-lettered here."""
        self.suspects.intersection_update(self.held)
        runnable: list[tuple[int, list[Entry]]] = []
        full = False
        for qi, broker in enumerate(self.brokers):
            holding = bool(self.suspects)
            reclaimed = broker.reclaim(
                self.node_id, lease, room, suspects=0 if holding else 1,
                plain=not holding, max_deliveries=max_deliveries)
            if not reclaimed:
                continue
            full = full or len(reclaimed) >= room
            log.info("reclaimed %d expired task(s) from %s", len(reclaimed), broker.queue)
            entries = []
            for entry, deliveries in reclaimed:
                key = (qi, entry.entry_id)
                if deliveries > max_deliveries:
                    self.held[key] = entry
                    self.dead(qi, entry, f"poison: its node was lost {deliveries - 1} "
                              "times while holding it (max_deliveries reached)")
                    continue
                if deliveries >= SUSPECT_DELIVERIES and key not in self.held:
                    self.suspects.add(key)
                entries.append(entry)
            runnable.append((qi, entries))
        return runnable, full

    def hand_back(self, keys: Iterable[JobKey]) -> None:
        """Give held entries back to their queues at once (not after a lease)."""
        by_queue: dict[int, list[bytes]] = {}
        for qi, entry_id in keys:
            by_queue.setdefault(qi, []).append(entry_id)
            self.held.pop((qi, entry_id), None)
        for qi, ids in by_queue.items():
            n = self.brokers[qi].hand_back(self.node_id, ids)
            log.info("handed back %d task(s) to %s", n, self.brokers[qi].queue)

    def hand_back_unheld(self) -> None:
        """Entries a dropped claim delivered to us but we never saw: give them back."""
        for qi, broker in enumerate(self.brokers):
            ids = [i for i in broker.pending_ids(self.node_id) if (qi, i) not in self.held]
            broker.hand_back(self.node_id, ids)

    # -- on the way out: best effort --------------------------------------------------

    def settle(self, result_ttl: float) -> None:
        """Report what finished (the calls outstanding answered first), then give back
        everything still held."""
        _best_effort(self.collect, result_ttl, wait=True)
        _best_effort(self.flush, result_ttl, wait=True)
        self.give_back(list(self.held))

    def give_back(self, keys: Sequence[JobKey]) -> None:
        """Hand back ``keys`` and whatever a dropped claim delivered to us."""
        _best_effort(self.hand_back, keys)
        _best_effort(self.hand_back_unheld)


def _pairs(items: list[Unreported]) -> list[tuple[bytes, Report]]:
    """The (entry id, report) pairs a completion call takes."""
    return [(entry_id, report) for _, entry_id, report in items]


def _best_effort(fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except (redis.RedisError, BrokerError) as exc:
        log.warning("could not reach Redis during shutdown (%s); the lease will return "
                    "these tasks to the queue", exc)


def log_task(entry: Entry, what: str, why: str) -> None:
    """One WARNING line about one task: its id and name, what happened and why."""
    name, task_id = describe(entry)
    log.warning("task %s (%s) %s: %s", task_id, name, what, why,
                extra={"task_id": task_id, "task": name, "event": what})
