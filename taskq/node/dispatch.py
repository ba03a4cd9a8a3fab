"""Dispatch, parent side: which pool process gets which jobs, and when to take some back.

The parent keeps one :class:`Proc` record per pool process (its pipe, its shared slot,
the jobs it holds, what it has not read yet) and one :class:`Dispatcher` whose policy
runs over those records:

- adaptive depth: one job per process until durations are known, then enough short
  jobs in each process to cover ``_CHUNK_SECONDS`` (an EMA of job durations);
- fair share: each process gets at most its share of the queue per round;
- an unread budget, well under the socket buffer, so a send to a busy process never
  blocks the parent;
- stealing: jobs queued behind one that runs long go back to the queue for an idle
  sibling (the child claims each job under its slot lock, so none runs twice);
- no hoarding: while a running job overruns, the pool wants one job per process (the
  node claims accordingly), and unstarted jobs beyond :data:`_HOARD_SECONDS` of
  expected work per process are taken back (:meth:`Dispatcher.surplus`) for the node to
  hand back to the queue, so other nodes run them (after short jobs the depth is
  hundreds, and a node would otherwise keep a whole burst of long ones).

The pool (:mod:`taskq.node.pool`) owns the processes' lifecycle and calls in here.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from taskq.node.child import INF, P
from taskq.outcome import ErrorTriple, describe_exception

_CHUNK_SECONDS = 0.002  # work a child should hold when jobs are short
_MAX_DEPTH = 512
_LONG_JOB = 0.005  # a child this long into one job gets nothing more piled behind it
_UNREAD_BUDGET = 64 * 1024  # well under the socket buffer, so a send never blocks
_HOARD_SECONDS = 0.25  # unstarted work a process may keep: beyond, other nodes should run it
_OVERRUN = 0.05  # a job running this long is an overrun (not a scheduling hiccup)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type_name: str
    message: str
    traceback: str
    cause: str  # "exception", "lost", "timeout" or "cancelled"


@dataclass(frozen=True, slots=True)
class Job:
    key: Any
    payload: Any


@dataclass(frozen=True, slots=True)
class Done:
    key: Any
    value: Any
    error: ErrorInfo | None
    duration: float


class Proc:
    """The parent's record of one pool process."""

    __slots__ = ("alive", "broken", "conn", "done", "held", "index", "init_failed", "lock",
                 "over", "pid", "pidfd", "proc", "reads", "ready", "retiring", "rss", "sent",
                 "sentinel", "slot", "tasks_left", "unread", "wake")

    def __init__(self, proc: Any, conn: Connection, slot: Any, lock: Any,
                 tasks_left: int | None, index: int = 0) -> None:
        self.proc, self.conn, self.slot, self.lock = proc, conn, slot, lock
        self.tasks_left = tasks_left
        self.index = index  # its place in the pool: a replacement takes the same one
        self.done = 0  # jobs it finished
        self.rss = 0  # resident bytes when last looked at (to tell an OOM kill)
        self.pid: int = proc.pid
        self.sentinel: int = proc.sentinel
        self.pidfd: int | None = None
        self.held: dict[int, Job] = {}  # seq -> job sent and not yet reported
        self.sent: deque[int] = deque()  # sizes of messages the child has not acked
        self.unread = self.reads = 0
        self.alive = True
        self.ready = self.broken = self.init_failed = self.retiring = self.over = False
        self.wake = INF  # announced hard deadline: wake by then even if the slot says inf

    def running(self) -> Job | None:
        """The job the child has claimed in its slot, if it is one of ours."""
        return self.held.get(int(self.slot[0]))

    def deadline(self) -> float:
        """When the parent must look at this process next (its hard time limit)."""
        return min(self.wake, self.slot[2]) if int(self.slot[0]) in self.held else self.wake

    def usable(self) -> bool:
        return self.ready and not self.broken and not self.retiring

    def stealable(self) -> bool:
        """Does it hold jobs queued behind the one it is running?"""
        return bool(self.held and self.slot[0] >= 0 and next(reversed(self.held)) > self.slot[0])

    def busy_long(self, now: float) -> bool:
        return bool(self.slot[0] >= 0 and now - self.slot[1] > _LONG_JOB)

    def steal_at(self) -> float:
        """When its running job starts to count as long (worth stealing behind)."""
        return float(self.slot[1]) + _LONG_JOB if self.stealable() else INF

    def acked(self, reads: int) -> None:
        """The child has read ``reads`` messages in all: they no longer count as unread."""
        while self.reads < reads and self.sent:
            self.unread -= self.sent.popleft()
            self.reads += 1


Send = Callable[[Proc, bytes], None]


def _depth_for(duration: float) -> int:
    """Jobs per process that cover ``_CHUNK_SECONDS`` at this duration (1 if longer)."""
    if duration >= _CHUNK_SECONDS:
        return 1
    return max(2, min(_MAX_DEPTH, math.ceil(_CHUNK_SECONDS / max(duration, 1e-9))))


def _overrun(procs: Sequence[Proc], now: float) -> float:
    """How long the longest running job has run, if past ``_OVERRUN`` (else 0)."""
    longest = 0.0
    for p in procs:
        if p.slot[0] >= 0:
            longest = max(longest, now - p.slot[1])
    return longest if longest > _OVERRUN else 0.0


class Dispatcher:
    """The queue of jobs no process holds yet, and the policy that hands them out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: deque[Job] = deque()
        self.depth = 1  # one job each until durations are known: long jobs stay balanced
        self._ema: float | None = None
        self._seq = 0

    def observe(self, durations: Sequence[float]) -> None:
        """Fold a batch of job durations into the EMA that sets the depth."""
        n = len(durations)
        mean = sum(durations) / n
        ema = self._ema = mean if self._ema is None else self._ema + (1 - 0.9**n) * (
            mean - self._ema)
        self.depth = _depth_for(ema)

    def results(self, p: Proc, seqs: list[int], durs: list[float],
                errs: list[tuple[int, ErrorTriple]], blob: bytes) -> list[Done]:
        """One ``RES`` message of ``p``: its jobs as Done (all failed if the values blob
        does not unpickle); their durations feed the EMA."""
        n = len(seqs)
        p.done += n
        try:
            vals = pickle.loads(blob)
        except Exception as exc:
            vals = [None] * n
            bad = describe_exception(exc)
            errs = [(i, bad) for i in range(n)]
        self.observe(durs)
        held = p.held
        if not errs:
            return [Done(held.pop(seq).key, val, None, dur)
                    for seq, val, dur in zip(seqs, vals, durs, strict=True)]
        failed = dict(errs)
        return [Done(held.pop(seq).key, vals[i],
                     None if (e := failed.get(i)) is None else ErrorInfo(*e, "exception"),
                     durs[i]) for i, seq in enumerate(seqs)]

    # -- no hoarding

    def capacity(self, procs: Sequence[Proc], now: float) -> int:
        """Jobs the pool wants in flight: ``depth`` per process, one while a running
        job overruns (before its duration is observed, the EMA does not know yet)."""
        return self.size * (1 if _overrun(procs, now) else self.depth)

    def keep(self, expected: float) -> int:
        """Jobs worth keeping at an ``expected`` duration: at least what the node would
        claim at it (capacity plus one each), at most ``_HOARD_SECONDS`` of work each."""
        floor = self.size * (_depth_for(expected) + 1)
        return max(floor, int(self.size * _HOARD_SECONDS / max(expected, 1e-9)))

    def surplus(self, procs: Sequence[Proc], count: int, now: float) -> list[Job]:
        """Unstarted jobs beyond :meth:`keep` of the ``count`` in flight, taken from the
        tail of the queue and from behind running jobs; [] when not that many."""
        expected = max(self._ema or 0.0, _overrun(procs, now))
        if count <= self.keep(expected):
            return []
        excess = count - self.keep(2 * expected)  # once per doubling of an overrun
        q = self.queue
        for p in procs:
            if len(q) >= excess:
                break
            if p.stealable():
                self._steal(p)
        return [q.pop() for _ in range(min(excess, len(q)))][::-1]

    def wake_at(self, procs: Sequence[Proc], count: int) -> float:
        """When the parent must look at the pool next though nothing arrives: a hard
        time limit, a job that starts to count as stuck while a sibling idles, or (with
        ``count`` in flight) when :meth:`surplus` would find some."""
        deadline = steal_at = start = INF
        for p in procs:
            deadline = min(deadline, p.deadline())
            steal_at = min(steal_at, p.steal_at())
            if p.slot[0] >= 0:
                start = min(start, float(p.slot[1]))
        if steal_at < INF and self.has_idle(procs):
            deadline = min(deadline, steal_at)
        if count > 2 * self.size and start < INF:
            trim_at = start + max(_OVERRUN, self.size * _HOARD_SECONDS / count)
            if trim_at > time.monotonic():  # else the pool's trim just ran: no busy loop
                deadline = min(deadline, trim_at)
        return deadline

    def has_idle(self, procs: Sequence[Proc]) -> bool:
        return not self.queue and any(
            p.usable() and not p.held and p.tasks_left != 0 for p in procs)

    def dispatch(self, procs: Sequence[Proc], send: Send) -> list[Done]:
        """Hand queued jobs to the processes with room; the jobs whose payload cannot be
        pickled come back failed."""
        failed: list[Done] = []
        now = time.monotonic()
        if self.has_idle(procs):
            for p in procs:  # an idle child and one stuck on a long job: rebalance
                if p.stealable() and p.busy_long(now):
                    self._steal(p)
        q = self.queue
        for p in procs:
            if not q:
                break
            if not p.usable():
                continue
            room = self.depth - len(p.held)
            if p.tasks_left is not None:
                room = min(room, p.tasks_left)
            if room <= 0 or (p.held and p.busy_long(now)):
                continue
            n = min(room, -(-len(q) // self.size))  # fair share of the queue
            jobs = [q.popleft() for _ in range(n)]
            data = self._pack(jobs, failed)
            if data is not None and p.held and p.unread + len(data) > _UNREAD_BUDGET:
                fit = max(0, _UNREAD_BUDGET - p.unread) * len(jobs) // len(data)  # only what fits
                q.extendleft(reversed(jobs[fit:]))
                del jobs[fit:]
                data = self._pack(jobs, failed) if jobs else None
            if data is None:
                continue
            seq = self._seq
            self._seq += len(jobs)
            p.held.update(zip(range(seq, self._seq), jobs, strict=True))
            if p.tasks_left is not None:
                p.tasks_left -= len(jobs)
            send(p, data)
        return failed

    def _steal(self, p: Proc) -> None:
        """Take back the jobs queued behind a long-running one (the child skips them)."""
        if not p.lock.acquire(timeout=0.05):  # a child killed inside the lock must not hang us
            return
        try:
            first = p.slot[0] + 1
            if first <= 0:
                return
            p.slot[3], p.slot[4] = first, self._seq  # every seq it holds is below self._seq
        finally:
            p.lock.release()
        stolen = [seq for seq in p.held if seq >= first]
        self.queue.extendleft(reversed([p.held.pop(seq) for seq in stolen]))
        if p.tasks_left is not None:
            p.tasks_left += len(stolen)

    def _pack(self, jobs: list[Job], failed: list[Done]) -> bytes | None:
        """Pickle a chunk; unpicklable payloads fail here as their job's error (and leave
        ``jobs``). None if no job is left."""
        seq = self._seq
        try:
            return pickle.dumps([(seq + i, j.payload) for i, j in enumerate(jobs)], P)
        except Exception:
            pass
        good = []
        for j in jobs:
            try:
                pickle.dumps(j.payload, P)
            except Exception as exc:
                failed.append(Done(j.key, None, ErrorInfo(*describe_exception(exc), "exception"),
                                   0.0))
            else:
                good.append(j)
        jobs[:] = good
        if not good:
            return None
        return pickle.dumps([(seq + i, j.payload) for i, j in enumerate(good)], P)
