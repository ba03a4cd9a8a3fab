"""The node loop: claim → dispatch → report, with leases, reclaim, drain and outages.

The node parent is one thread running one event loop and never runs user code. It
keeps one blocking ``XREADGROUP`` outstanding on a dedicated connection while it waits
on its pool, so new tasks and finished ones are both handled the moment they arrive:

    Redis stream ──XREADGROUP COUNT n──▶ held ──▶ SupervisedPool ──▶ Done
         ▲                                                         │
         └────────── complete.lua (one call per poll, per queue) ◀─┘

Every few seconds it renews the lease of everything it holds (renew.lua), reclaims
entries whose lease expired on other nodes (reclaim.lua), promotes due retries
(promote.lua) and heartbeats. When Redis goes away, finished outcomes are kept and
reported once it is back; nothing is acknowledged before its outcome is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis

from taskq import registry
from taskq.broker import REDIS_DOWN, Broker, Claim, connect, heartbeat, remove_node
from taskq.config import Settings
from taskq.errors import BrokerError
from taskq.message import Entry, Report, dead_letter
from taskq.node import runner
from taskq.node.pool import Done, Job, SupervisedPool

log = logging.getLogger("taskq.node")

CLAIM_BLOCK = 2.0
"""Seconds one blocking claim waits; the claim socket's timeout is well above it."""
PROMOTE_EVERY, HEARTBEAT_EVERY = 0.25, 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 1.0
"""Seconds between reconnection attempts while Redis is away: short next to a lease."""
SUSPECT_DELIVERIES = 3
"""A reclaimed entry delivered this often already lost two nodes: it may be poison, so a
node holds at most one such suspect at a time and reclaims nothing else meanwhile."""
_REDIS_DOWN = (*REDIS_DOWN, BrokerError)
_REDIS_UNWELL = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                 redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
"""Error replies of a server that cannot serve us right now: back off as if it were down
(so do MISCONF, a failing disk, and the same errors raised inside a script)."""

JobKey = tuple[int, bytes]  # (queue index, entry id)


class Node:
    """One worker node: a claim loop in front of a supervised pool of processes."""

    def __init__(
        self,
        settings: Settings,
        *,
        imports: Sequence[str] = (),
        init: str | None = None,
        init_args: Sequence[Any] = (),
        burst: bool = False,
        node_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.burst = burst
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        timeout = max(10.0, CLAIM_BLOCK + 5.0)
        # No client-side retries: a retrying command would stall the loop for seconds
        # while Redis is away; the loop backs off and reconnects by itself (_redis_down).
        self.client = connect(settings.url, retries=False, socket_timeout=timeout,
                              socket_connect_timeout=5.0)
        registry.import_task_modules(imports)  # retry policies for tasks whose process died
        self.brokers = [Broker(self.client, q) for q in settings.queues]
        self.claim = Claim(settings.url, [b.keys.stream for b in self.brokers], self.node_id,
                           socket_timeout=timeout)
        self.pool = SupervisedPool(
            settings.procs,
            runner.run_entry,
            initializer=runner.init_child,
            initargs=(tuple(imports), init, tuple(init_args), settings.secret),
            max_tasks_per_child=settings.max_tasks_per_child,
            max_memory_per_child=settings.max_memory_per_child,
            hard_timeout_grace=settings.hard_timeout_grace,
        )
        self.held: dict[JobKey, Entry] = {}
        self._suspects: set[JobKey] = set()
        self.unreported: list[tuple[int, bytes, Report]] = []  # (queue index, entry id, report)
        self.stopping = 0  # 0 running, 1 draining (graceful), 2 leave now
        self.processed = self.failed = 0
        self._claim_empty = False
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN
        now = time.monotonic()
        self._due = {"renew": now, "reclaim": now, "promote": now, "heartbeat": now}
        self._drain_deadline = float("inf")
        self._draining = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle --------------------------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        """Graceful stop; a second request (or ``force``) leaves at once."""
        self.stopping = 2 if force or self.stopping else 1
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s: %s", signal.Signals(signum).name,
                 "stopping now" if self.stopping else "finishing running tasks")
        self.request_stop()

    def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queues are empty). Exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            self._setup()
            self.pool.start()
            log.info("node %s serving %s with %d processes", self.node_id,
                     ",".join(self.settings.queues), self.settings.procs)
            while not self._finished():
                self._step()
            self._shutdown()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old.items():
                signal.signal(s, handler)
            self.pool.terminate()
            self.claim.close()
            remove_node(self.client, self.node_id)
        return 0

    def _setup(self) -> None:
        for broker in self.brokers:
            broker.ensure_group()

    def _finished(self) -> bool:
        if self.stopping == 2:
            return True
        if self.stopping == 1:
            if time.monotonic() > self._drain_deadline:
                log.warning("shutdown timeout: handing back what is still running")
                return True
            return not self.held and not self.unreported
        if self.burst and self._claim_empty and not self.held and not self.unreported:
            return self._nothing_delayed()
        return False

    def _nothing_delayed(self) -> bool:
        try:
            return all(b.delayed_count() == 0 for b in self.brokers)
        except _REDIS_DOWN:
            return False

    # -- one turn of the loop ---------------------------------------------------------

    def _step(self) -> None:
        if self.stopping and not self._draining:
            self._draining = True
            self._begin_drain()
        now = time.monotonic()
        if now >= self._down_until:
            self._guarded(self._talk, now)
        waitables: list[Any] = [self._wake_r]
        claim_socket = self.claim.waitable()
        if claim_socket is not None:
            waitables.append(claim_socket)
        done = self.pool.poll(self._wait_time(), also_wait=waitables)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 512)
        if done:
            self._finish(done)
        if self.claim.outstanding:
            self._guarded(self._poll_claim)

    def _talk(self, now: float) -> None:
        if self._backoff > BACKOFF_MIN:
            # Back after an outage: renew first, and give the other nodes time to come
            # back and renew theirs before taking anything as expired.
            self._due["reclaim"] = max(self._due["reclaim"],
                                       now + self.settings.lease / 2 + BACKOFF_MAX)
        self._housekeeping(now)
        self._flush_reports()
        self._maybe_claim()
        self._backoff = BACKOFF_MIN

    def _poll_claim(self) -> None:
        if self.claim.ready():  # raises too if the server hung up
            got = self.claim.read()
            self._claim_empty = not got
            for qi, entries in got.items():
                self._accept(qi, entries)

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run one exchange with Redis; an outage backs off, a vanished stream is recreated."""
        try:
            fn(*args)
        except _REDIS_DOWN as exc:
            self._redis_down(exc)
        except redis.ResponseError as exc:
            text = str(exc)
            if "NOGROUP" in text:  # the stream vanished (Redis restarted empty): recreate it
                self.claim.drop()
                self._guarded(self._setup)
            elif isinstance(exc, _REDIS_UNWELL) or any(
                    code in text for code in ("MISCONF", "READONLY", "OOM", "TRYAGAIN")):
                self._redis_down(exc)
            else:
                raise

    def _wait_time(self) -> float:
        now = time.monotonic()
        if now < self._down_until:
            return self._down_until - now
        next_due = min(self._due.values())
        if self.unreported:
            next_due = min(next_due, now + 0.05)
        if self.burst and not self.claim.outstanding:
            next_due = min(next_due, now + 0.05)
        if self.stopping:
            next_due = min(next_due, self._drain_deadline)
        return max(0.0, min(next_due - now, CLAIM_BLOCK))

    def _redis_down(self, exc: Exception) -> None:
        log.warning("Redis unavailable (%s); retrying in %.1f s", exc, self._backoff)
        self.claim.drop()
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._due["renew"] = 0.0  # first thing once it is back: keep what we hold

    # -- claiming ---------------------------------------------------------------------

    def _room(self) -> int:
        return self.pool.idle_capacity + self.settings.procs - self.pool.queued

    def _maybe_claim(self) -> None:
        if self.stopping or self.claim.outstanding:
            return
        count = min(self._room(), self.settings.claim_size)
        if count > 0:
            self.claim.send(count, None if self.burst else CLAIM_BLOCK)

    def _accept(self, qi: int, entries: Sequence[Entry]) -> None:
        jobs = []
        limit = self.settings.max_message_bytes
        for entry in entries:
            key = (qi, entry.entry_id)
            if key in self.held:
                continue  # already ours and running (a reclaim of our own stale entry)
            self.held[key] = entry
            if len(entry.body) > limit:
                reason = f"message of {len(entry.body)} bytes exceeds the {limit}-byte limit"
                self._report_dead(qi, entry, reason)
            else:
                jobs.append(Job(key, entry))
        if jobs:
            self.pool.submit(jobs)

    # -- outcomes ---------------------------------------------------------------------

    def _finish(self, done: Sequence[Done]) -> None:
        for d in done:
            qi, entry_id = d.key
            entry = self.held.pop(d.key, None)
            if entry is None:
                continue
            if d.key in self._suspects:  # it did not kill us: take the next one soon
                self._suspects.discard(d.key)
                self._due["reclaim"] = 0.0
            if d.error is None:
                report: Report = d.value
            else:  # its process died, or was killed at the hard time limit
                error = (d.error.type_name, d.error.message, d.error.traceback)
                report = runner.run_lost(entry, error, self.settings.secret)
            self.processed += 1
            self.failed += report.kind != "ok"
            self.unreported.append((qi, entry_id, report))
        if time.monotonic() >= self._down_until:
            self._guarded(self._flush_reports)

    def _report_dead(self, qi: int, entry: Entry, reason: str) -> None:
        self.held.pop((qi, entry.entry_id), None)
        self.unreported.append((qi, entry.entry_id, dead_letter(entry, reason)))
        log.warning("dead-lettered entry %s: %s", entry.entry_id.decode(), reason)

    def _flush_reports(self) -> None:
        """One completion call per queue for everything finished; kept on failure."""
        if not self.unreported:
            return
        by_queue: dict[int, list[tuple[bytes, Report]]] = {}
        for qi, entry_id, report in self.unreported:
            by_queue.setdefault(qi, []).append((entry_id, report))
        for qi, reports in by_queue.items():
            _, suppressed = self.brokers[qi].complete(self.node_id, reports, self.settings.result_ttl)
            if suppressed:
                log.warning("%d late report(s) suppressed: their lease had passed to another node",
                            suppressed)
            self.unreported = [u for u in self.unreported if u[0] != qi]

    # -- periodic work ----------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        lease = self.settings.lease
        if now >= self._due["renew"]:
            self._renew()
            self._due["renew"] = now + lease / 3
        if now >= self._due["reclaim"]:
            more = not self.stopping and self._reclaim()
            self._due["reclaim"] = now + (0.05 if more else lease / 2)
        if now >= self._due["promote"]:
            for broker in self.brokers:
                broker.promote()
            self._due["promote"] = now + PROMOTE_EVERY
        if now >= self._due["heartbeat"]:
            self._heartbeat()
            self._due["heartbeat"] = now + HEARTBEAT_EVERY

    def _renew(self) -> None:
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

    def _reclaim(self) -> bool:
        """Take over expired entries; True if there may be more to take right away."""
        room = max(self._room(), self.settings.procs)
        self._suspects.intersection_update(self.held)
        more = False
        for qi, broker in enumerate(self.brokers):
            holding = bool(self._suspects)
            reclaimed = broker.reclaim(
                self.node_id, self.settings.lease, room, suspects=0 if holding else 1,
                plain=not holding, max_deliveries=self.settings.max_deliveries)
            if not reclaimed:
                continue
            more = more or len(reclaimed) >= room
            log.info("reclaimed %d expired task(s) from %s", len(reclaimed), broker.queue)
            runnable = []
            for entry, deliveries in reclaimed:
                key = (qi, entry.entry_id)
                if deliveries > self.settings.max_deliveries:
                    self.held[key] = entry
                    self._report_dead(qi, entry, f"poison: its node was lost {deliveries - 1} "
                                      "times while holding it (max_deliveries reached)")
                    continue
                if deliveries >= SUSPECT_DELIVERIES and key not in self.held:
                    self._suspects.add(key)
                runnable.append(entry)
            self._accept(qi, runnable)
        return more and self._room() > 0  # never hoard more than the pool can start

    def _heartbeat(self) -> None:
        heartbeat(self.client, self.node_id, {
            "host": socket.gethostname(), "pid": os.getpid(), "procs": self.settings.procs,
            "queues": ",".join(self.settings.queues), "processed": self.processed,
            "failed": self.failed, "in_flight": len(self.held),
        }, ttl=HEARTBEAT_EVERY * 6)

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Leave: report what finished, hand back everything still held (in a forced
        stop or after the shutdown timeout, that includes tasks that were running)."""
        self.claim.drop()
        if self.held:
            self.pool.terminate()
        self._try(self._flush_reports)
        if self.held:
            self._try(lambda: self._hand_back(list(self.held)))
        self._try(self._hand_back_unheld)

    def _begin_drain(self) -> None:
        """First signal: stop claiming and hand back the tasks no process has started."""
        self.claim.drop()
        self._drain_deadline = time.monotonic() + self.settings.shutdown_timeout
        unstarted = [job.key for job in self.pool.withdraw_queued()]
        self._try(lambda: self._hand_back(unstarted))
        self._try(self._hand_back_unheld)

    def _hand_back(self, keys: Sequence[JobKey] | set[JobKey]) -> None:
        by_queue: dict[int, list[bytes]] = {}
        for qi, entry_id in keys:
            by_queue.setdefault(qi, []).append(entry_id)
            self.held.pop((qi, entry_id), None)
        for qi, ids in by_queue.items():
            n = self.brokers[qi].hand_back(self.node_id, ids)
            log.info("handed back %d task(s) to %s", n, self.brokers[qi].queue)

    def _hand_back_unheld(self) -> None:
        """Entries a dropped claim delivered to us but we never saw: give them back."""
        for qi, broker in enumerate(self.brokers):
            ids = [i for i in broker.pending_ids(self.node_id) if (qi, i) not in self.held]
            broker.hand_back(self.node_id, ids)

    def _try(self, fn: Any) -> None:
        try:
            fn()
        except (redis.RedisError, BrokerError) as exc:
            log.warning("could not reach Redis during shutdown (%s); the lease will return "
                        "these tasks to the queue", exc)
