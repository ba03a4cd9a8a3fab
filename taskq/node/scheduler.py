"""The periodic scheduler a node runs when it knows any schedule (``taskq/periodic.py``).

Exactly one node at a time queues the runs of a queue's schedules: the holder of that
queue's lease (``taskq:{q}:sched:lock``, SET NX PX, renewed every second, LEASE seconds
long). Other nodes that know schedules try to take it every half second: hot standbys.

Never a missed or doubled run across a failover: each run is queued by one script that
checks the lease and records the run's scheduled time in ``taskq:{q}:sched:last`` in the
same step (sched_enqueue.lua). A new holder continues from the last recorded run, so a
run due while nobody held the lease is queued (late) once the lease is taken again, and
a holder that lost its lease (paused past it) queues nothing. Runs later than MISFIRE
seconds are skipped, not replayed: a schedule added back after a week does not queue a
week of runs. The first run of a schedule never seen before is its next time after now.

The node loop calls :meth:`Scheduler.tick` on every turn; it does its own pacing on
``time.monotonic()`` (cron times are wall-clock UTC).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from taskq.broker import Broker
from taskq.broker.queue import Signed
from taskq.broker.schedule import ALREADY, NOT_HOLDER, Scheduling
from taskq.config import Settings
from taskq.message import TaskMessage
from taskq.periodic import Schedule, schedules
from taskq.signing import SIGNED_TTL, sign

log = logging.getLogger("taskq.node")

LEASE = 5.0
"""Seconds the scheduler lease lasts unrenewed: how long a failover takes at most."""
RENEW_EVERY, TRY_EVERY, TICK = 1.0, 0.5, 0.1
MISFIRE = 3600.0
"""Seconds after which a run that was not queued in time is skipped."""
MOST_PER_TICK = 100


@dataclass
class _Queue:
    ops: Scheduling
    schedules: list[Schedule]
    held: bool = False
    next_hold: float = 0.0
    last: dict[str, int] = field(default_factory=dict)
    """Schedule name → last run queued (ms), as read from Redis when the lease was taken."""


class Scheduler:
    """The scheduler of one node over ``schedules`` (grouped by queue)."""

    def __init__(self, client: redis.Redis, node_id: str, schedules: Sequence[Schedule],
                 default_queue: str, secret: bytes | None = None, lease: float = LEASE,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id, self.secret, self.lease, self.clock = node_id, secret, lease, clock
        by_queue: dict[str, list[Schedule]] = {}
        for s in schedules:
            by_queue.setdefault(s.queue or default_queue, []).append(s)
        self.queues = {q: _Queue(Scheduling(Broker(client, q)), ss) for q, ss in by_queue.items()}
        self._next_tick = 0.0

    @property
    def holding(self) -> list[str]:
        """The queues whose lease this node holds."""
        return [q for q, state in self.queues.items() if state.held]

    def tick(self) -> None:
        """Keep or try the leases, and queue the runs that are due where held."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK
        for queue, state in self.queues.items():
            if now >= state.next_hold:
                self._hold(queue, state, now)
            if state.held:
                self._run_due(queue, state)

    def close(self) -> None:
        """Give up the leases held (a standby takes over at once); best effort."""
        for state in self.queues.values():
            if state.held:
                state.held = False
                with contextlib.suppress(redis.RedisError):  # it expires after LEASE anyway
                    state.ops.release(self.node_id)

    def _hold(self, queue: str, state: _Queue, now: float) -> None:
        was = state.held
        state.held = state.ops.hold(self.node_id, self.lease)
        state.next_hold = now + (RENEW_EVERY if state.held else TRY_EVERY)
        if state.held and not was:
            state.last = state.ops.last_runs()
            log.info("scheduler: holding the lease of queue %s (%d schedules)",
                     queue, len(state.schedules))
        elif was and not state.held:
            log.warning("scheduler: lost the lease of queue %s", queue)

    def _run_due(self, queue: str, state: _Queue) -> None:
        now_ms = int(self.clock() * 1000)
        for sched in state.schedules:
            last = state.last.get(sched.name)
            if last is None:  # never seen: its first run is the next one after now
                start = sched.last_at_or_before(now_ms)
                if state.ops.start_at(self.node_id, sched.name, start) == NOT_HOLDER:
                    state.held = False
                    return
                state.last = state.ops.last_runs()
                continue
            if not self._queue_runs(queue, state, sched, last, now_ms):
                return

    def _queue_runs(self, queue: str, state: _Queue, sched: Schedule, last: int,
                    now_ms: int) -> bool:
        """Queue the runs of ``sched`` due after ``last``; False if the lease is gone."""
        floor = now_ms - int(MISFIRE * 1000)
        if last < floor:
            log.warning("scheduler: %s: skipping the runs between %d and %d (older than %d s)",
                        sched.name, last, floor, MISFIRE)
            last = sched.last_at_or_before(floor)
        for at in sched.runs(last, now_ms, MOST_PER_TICK):
            done = state.ops.enqueue_run(self.node_id, sched.name, at, self._envelope(queue, sched, at))
            if done == NOT_HOLDER:
                state.held = False
                log.warning("scheduler: lost the lease of queue %s", queue)
                return False
            if done == ALREADY:  # recorded by a holder before us: continue from there
                state.last = state.ops.last_runs()
                return True
            state.last[sched.name] = at
        return True

    def _envelope(self, queue: str, sched: Schedule, at_ms: int) -> Signed:
        msg = TaskMessage(id=sched.task_id(at_ms), task=sched.task, args=list(sched.args),
                          kwargs=dict(sched.kwargs), keep_result=True)
        if self.secret is None:
            return msg.encode(), None
        body = msg.encode(at_ms / 1000 + SIGNED_TTL)
        return body, sign(self.secret, queue, body)


def for_node(client: redis.Redis, node_id: str, settings: Settings) -> Scheduler | None:
    """The scheduler of a node, if this process knows any schedule (else None)."""
    known = schedules()
    if not known:
        return None
    return Scheduler(client, node_id, known, settings.queues[0], settings.secret)
