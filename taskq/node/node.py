"""The node loop: claim → dispatch → report, with leases, reclaim, drain and outages.

The node parent is one thread running one event loop and never runs user code. It
keeps one claim outstanding (a blocking ``XREADGROUP`` on a connection of its own,
:mod:`taskq.broker.claim`) while it waits on its pool, so new tasks and finished ones
are both handled the moment they arrive:

    Redis stream ──XREADGROUP COUNT n──▶ held ──▶ SupervisedPool ──▶ Done
         ▲                                                         │
         └── complete.lua (one call outstanding per queue, answer ◀─┘
             read when it is in: :mod:`taskq.broker.reporting`)

Every few seconds it renews the lease of everything it holds (renew.lua), reclaims
entries whose lease expired on other nodes (reclaim.lua), promotes due retries
(promote.lua) and heartbeats (:mod:`.schedule` says when). When Redis goes away,
finished outcomes are kept and reported once it is back; nothing is acknowledged before
its outcome is recorded (:mod:`.holdings`).

With ``settings.metrics`` it counts what it does (:mod:`.metrics`, plain ints on the hot
path) and serves ``/metrics`` and ``/healthz`` from a process of its own (:mod:`.health`);
its heartbeat always carries the pool's process table (:func:`.exits.procs_table`).

Its control stream (:mod:`.control`) is read with one more blocking read kept
outstanding beside the claim: a cancel reaches the process running the task within a
loop turn, and the tasks' progress is written from here at most once a second.

The loop is public in pieces, so it runs in process too (tests on fakeredis):
``Node(settings, client=..., claim=...)`` takes its connections, and
``start()`` / ``step()`` / ``finished()`` / ``stop()`` (or ``with node:``) are what
``run()`` is made of, less the signal handling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from taskq import registry
from taskq.broker import Broker, heartbeat, remove_node
from taskq.broker.claim import Claimer
from taskq.broker.cluster import refresh
from taskq.config import Settings
from taskq.message import Entry
from taskq.node import parts, scheduler
from taskq.node.control import NodeControl
from taskq.node.holdings import Holdings
from taskq.node.outage import DOWN, Backoff, outage
from taskq.node.parts import CLAIM_BLOCK
from taskq.node.pool import Done, Job, PoolInitError
from taskq.node.schedule import Schedule
from taskq.node.stopping import Stopping
from taskq.node.telemetry import Telemetry

log = logging.getLogger("taskq.node")

PROMOTE_EVERY, HEARTBEAT_EVERY = 0.25, 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 1.0
"""Seconds between reconnection attempts while Redis is away: short next to a lease."""


class Node:
    """One worker node: a claim loop in front of a supervised pool of processes.

    With ``client`` (any redis client, fakeredis included) the node connects nowhere
    itself; its claim is then ``claim`` or, by default, a :class:`SyncClaim` on that
    client. Without, it connects to ``settings.url`` and claims on a socket of its own.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        claim: Claimer | None = None,
        imports: Sequence[str] = (),
        init: str | None = None,
        init_args: Sequence[Any] = (),
        burst: bool = False,
        node_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.burst = burst
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.client = client if client is not None else parts.connect_node(settings.url)
        registry.import_task_modules(imports)  # retry policies for tasks whose process died
        self.brokers = [Broker(self.client, q, wait_replicas=settings.wait_replicas)
                        for q in settings.queues]
        self.claim = claim or parts.make_claim(settings.url, self.client, self.brokers,
                                               self.node_id, in_process=client is not None)
        self.pool = parts.make_pool(settings, imports, init, init_args)
        self.schedule = Schedule()
        self.scheduler = scheduler.for_node(self.client, self.node_id, settings)  # periodic
        self.processed = self.failed = 0
        self.telemetry = Telemetry(settings.queues, settings.metrics)
        self.metrics = self.telemetry.metrics  # None unless settings.metrics
        completions = parts.make_completions(settings.url, self.brokers, settings,
                                             in_process=client is not None)
        self._holdings = Holdings(self.brokers, self.node_id, self.telemetry.on_reported,
                                  secret=settings.secret, completions=completions)
        self.telemetry.attach(self._holdings, self.pool)
        self.control = NodeControl(self.node_id, self.client, self.brokers, self._holdings,
                                   self.pool, url=None if client is not None else settings.url,
                                   secret=settings.secret, progress_ttl=settings.result_ttl)
        self.stopping = Stopping(self.pool, self._holdings, self.claim,
                                 settings.shutdown_timeout)
        self._claim_empty = False
        self._backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- what a caller can see ----------------------------------------------------------

    @property
    def held_count(self) -> int:
        """Entries claimed and not yet finished (running, or queued in the pool)."""
        return len(self._holdings.held)

    @property
    def unreported_count(self) -> int:
        """Finished entries whose outcome Redis has not recorded yet."""
        return len(self._holdings.unreported)

    @property
    def state(self) -> str:
        """``running``, ``draining`` (graceful stop), ``leaving`` (stop now) or ``closed``."""
        if self._closed:
            return "closed"
        return self.stopping.name

    # -- lifecycle --------------------------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        """Graceful stop; a second request (or ``force``) leaves at once."""
        self.stopping.request(force)
        if not self._closed:  # once closed, the pipe's fd number may be someone else's
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s: %s", signal.Signals(signum).name,
                 "stopping now" if self.stopping.level else "finishing running tasks")
        self.request_stop()

    def run(self) -> int:
        """Run until stopped (or, in burst mode, until the queues are empty). Exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            self.start()
            while not self.finished():
                self.step()
            self.stop()
        except PoolInitError:
            self.stop()  # hand back what was claimed: no process here can run it
            raise
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old.items():
                signal.signal(s, handler)
            self.close()
        return 0

    def start(self) -> None:
        """Create the queues' groups, start the metrics server (if asked) and the pool."""
        self._setup()
        self.telemetry.serve(self.settings.lease)  # before the pool: it holds none of its pipes
        self.pool.start()
        log.info("node %s serving %s with %d processes", self.node_id,
                 ",".join(self.settings.queues), self.settings.procs)

    def stop(self) -> None:
        """Leave: report what finished, hand back everything still held, then close."""
        if self._closed:
            return
        try:
            self.stopping.leave(self.settings.result_ttl)
        finally:
            self.close()

    def close(self) -> None:
        """Release the pool (SIGKILL), the claim, the heartbeat and the wake-up pipe."""
        if self._closed:
            return
        self._closed = True
        self.pool.terminate()
        self.telemetry.close()
        self.claim.close()
        self.control.close()
        self._holdings.close()
        remove_node(self.client, self.node_id)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _setup(self) -> None:
        for broker in self.brokers:
            broker.ensure_group()
            broker.load_complete()  # completion calls are EVALSHAs on their own connection

    def finished(self) -> bool:
        """Should the loop end? (Stopped and drained; or, in burst mode, out of work.)"""
        idle = not self._holdings.held and not self._holdings.unreported
        if self.stopping.level:
            return self.stopping.done(idle)
        if self.burst and self._claim_empty and idle:
            return self._nothing_delayed()
        return False

    def _nothing_delayed(self) -> bool:
        try:
            return all(b.delayed_count() == 0 for b in self.brokers)
        except DOWN:
            return False

    # -- one turn of the loop ---------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """One turn of the loop: housekeeping, reports, a claim, one wait on the pool (at
        most ``timeout`` seconds; None: until the next periodic work is due), outcomes."""
        self.stopping.begin_drain_once()
        now = time.monotonic()
        self.telemetry.beat(now)
        if not self._backoff.waiting(now):
            self._guarded(self._talk, now)
        waitables: list[Any] = [self._wake_r, *self.telemetry.waitables(),
                                *self._holdings.waitables()]
        control = self.control.waitable()
        if control is not None:
            waitables.append(control)
        if self.claim.outstanding:
            claim_waitable = self.claim.waitable()
            if claim_waitable is None:  # nothing to wait on: its answer is in now
                self._guarded(self._poll_claim)
            else:
                waitables.append(claim_waitable)
        wait = self._wait_time()
        done = self.pool.poll(wait if timeout is None else min(wait, timeout),
                              also_wait=waitables)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 512)
        self._guarded(self._holdings.collect, self.settings.result_ttl)  # calls answered
        if done:
            self._finish(done)
        if surplus := self.pool.take_surplus():  # unstarted behind overruns: others may run them
            self._guarded(self._holdings.hand_back, [job.key for job in surplus])
        if not self._backoff.waiting(time.monotonic()):
            self._guarded(self.control.poll, time.monotonic())
        if self.claim.outstanding:
            self._guarded(self._poll_claim)
        self.telemetry.answer()

    def _talk(self, now: float) -> None:
        if self._backoff.after_outage:
            # Back after an outage: renew first, and give the other nodes time to come
            # back and renew theirs before taking anything as expired.
            self.schedule.not_before("reclaim", now + self.settings.lease / 2 + BACKOFF_MAX)
        self._housekeeping(now)
        self.telemetry.call("complete", self._holdings.flush, self.settings.result_ttl)
        self._maybe_claim()
        away = self._backoff.succeeded(now)
        if away is not None:
            log.info("Redis is back after %.1f s", away, extra={"outage_seconds": round(away, 3)})

    def _poll_claim(self) -> None:
        got = self.telemetry.call("claim", self._read_claim)
        if got is None:
            return
        self._claim_empty = not got
        m = self.metrics
        for qi, entries in got.items():
            if m is not None:
                m.claimed_entries(qi, entries)
            self._accept(qi, entries)

    def _read_claim(self) -> dict[int, list[Entry]] | None:
        """The claim's answer if it is in (ready() raises too if the server hung up)."""
        return self.claim.read() if self.claim.ready() else None

    def _guarded(self, fn: Callable[..., object], *args: Any) -> None:
        """Run one exchange with Redis; an outage backs off, a vanished stream is recreated."""
        try:
            fn(*args)
        except Exception as exc:
            kind = outage(exc)
            if kind is None:
                raise
            if kind == "nogroup":
                self.claim.drop()
                self._guarded(self._setup)
            else:
                self._redis_down(exc)

    def _wait_time(self) -> float:
        now = time.monotonic()
        if self._backoff.waiting(now):
            return self._backoff.until - now
        next_due = self.schedule.next()
        if self._holdings.unreported:
            next_due = min(next_due, now + 0.05)
        if self.burst and not self.claim.outstanding:
            next_due = min(next_due, now + 0.05)
        if self.stopping.level:
            next_due = min(next_due, self.stopping.deadline)
        return max(0.0, min(next_due - now, CLAIM_BLOCK))

    def _redis_down(self, exc: Exception) -> None:
        first = self._backoff.down_since is None  # one line when it goes, one when it is back
        delay = self._backoff.failed(time.monotonic())
        log.log(logging.WARNING if first else logging.DEBUG,
                "Redis unavailable (%s); retrying in %.1f s", exc, delay)
        self.claim.drop()
        self.control.drop()
        self._holdings.abandon()  # completion calls outstanding: sent again once it is back
        refresh(self.client)  # a failover: the slots may have new masters (no-op off cluster)
        self.schedule.make_due("renew")  # first thing once it is back: keep what we hold

    # -- claiming ---------------------------------------------------------------------

    def _room(self) -> int:
        return self.pool.idle_capacity + self.settings.procs - self.pool.queued

    def _maybe_claim(self) -> None:
        if self.stopping.level or self.claim.full:
            return
        count = min(self._room(), self.settings.claim_size)
        if count > 0:
            self.claim.send(count, None if self.burst else CLAIM_BLOCK)

    def _accept(self, qi: int, entries: Sequence[Entry]) -> None:
        entries = self.control.early(qi, entries)  # cancelled before we read the claim
        jobs = []
        limit = self.settings.max_message_bytes
        for entry in entries:
            entry = entry._replace(queue=self.settings.queues[qi])  # what its signature binds
            if not self._holdings.take(qi, entry):
                continue  # already ours and running (a reclaim of our own stale entry)
            if len(entry.body) > limit:
                reason = f"message of {len(entry.body)} bytes exceeds the {limit}-byte limit"
                self._holdings.dead(qi, entry, reason)
            else:
                jobs.append(Job((qi, entry.entry_id), entry))
        if jobs:
            self.pool.submit(jobs)

    # -- outcomes ---------------------------------------------------------------------

    def _finish(self, done: Sequence[Done]) -> None:
        holdings, m = self._holdings, self.metrics
        for d in done:
            qi, entry_id = d.key
            entry = holdings.release(d.key)
            if entry is None:
                continue
            if d.key in holdings.suspects:  # it did not kill us: take the next one soon
                holdings.suspects.discard(d.key)
                self.schedule.make_due("reclaim")
            report = parts.report_for(d, entry, self.settings.secret)
            if m is not None:
                m.finished(qi, report.task, d.duration)
            self.processed += 1
            self.failed += report.kind not in ("ok", "cancelled")
            holdings.record(qi, entry_id, report)
        if not self._backoff.waiting(time.monotonic()):
            self._guarded(self.telemetry.call, "complete", holdings.flush,
                          self.settings.result_ttl)

    # -- periodic work ----------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        lease, schedule, call = self.settings.lease, self.schedule, self.telemetry.call
        if schedule.is_due("renew", now):
            call("renew", self._holdings.renew)
            self.telemetry.renewed()
            schedule.set("renew", now + lease / 3)
        if schedule.is_due("reclaim", now):
            more = not self.stopping.level and call("reclaim", self._reclaim)
            schedule.set("reclaim", now + (0.05 if more else lease / 2))
        if schedule.is_due("promote", now):
            for broker in self.brokers:
                call("promote", broker.promote)
            schedule.set("promote", now + PROMOTE_EVERY)
        if self.scheduler is not None:  # paces itself
            self.scheduler.tick()
        if schedule.is_due("heartbeat", now):
            call("heartbeat", self._heartbeat)
            schedule.set("heartbeat", now + HEARTBEAT_EVERY)

    def _reclaim(self) -> bool:
        """Take over expired entries; True if there may be more to take right away."""
        room = max(self._room(), self.settings.procs)
        runnable, full = self._holdings.reclaim(self.settings.lease, room,
                                                self.settings.max_deliveries)
        for qi, reclaimed in runnable:
            entries = self.control.screen(qi, reclaimed)  # cancelled meanwhile: never run
            if self.metrics is not None:
                self.metrics.reclaimed += len(entries)
            self._accept(qi, entries)
        return full and self._room() > 0  # never hoard more than the pool can start

    def _heartbeat(self) -> None:
        heartbeat(self.client, self.node_id, {
            "host": socket.gethostname(), "pid": os.getpid(), "procs": self.settings.procs,
            "queues": ",".join(self.settings.queues), "processed": self.processed,
            "failed": self.failed, "in_flight": len(self._holdings.held),
            **self.telemetry.heartbeat_fields(self.client, self.pool),
        }, ttl=HEARTBEAT_EVERY * 6)
