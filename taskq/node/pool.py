"""The supervised pool, parent side: slots, dispatch, crash attribution, recycling.

A pool of forked processes (their runtime is :mod:`taskq.node.child`), driven by a
single-threaded parent's event loop.

Like ``multiprocessing.Pool`` but with crash isolation (a dead child costs only the job
it was running), per-job hard timeouts, recycling, and adaptive chunking. The parent
never blocks: ``poll()`` waits on the children's pipes and sentinels (plus whatever the
caller adds) and does all supervision work itself.

Each child has a duplex pipe and a shared slot (see :mod:`taskq.node.child`): the parent
attributes a death or an overrun to one job without a round trip per job, and takes back
jobs queued behind a long one (the child claims each job under a lock, so a taken-back
job never runs twice).

Recycling (max tasks, max memory) is the parent's decision, one process at a time: a
process is told to exit only while every sibling is up and initialized, so recycling never
takes more than one process's capacity at once. A process over its memory limit asks
(``OVER``) and exits at once if it may, else works on until its turn; the first processes
get staggered task budgets, so they do not all come due together.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from taskq.errors import ConfigError, TaskqError
from taskq.message import ErrorTriple, describe_exception
from taskq.node.child import ARM, EXIT, GO_ON, INF, INIT_FAIL, OVER, READY, RES, P, Runner, child_main

_CTX = multiprocessing.get_context("fork")
_CHUNK_SECONDS = 0.002  # work a child should hold when jobs are short
_MAX_DEPTH = 512
_LONG_JOB = 0.005  # a child this long into one job gets nothing more piled behind it
_UNREAD_BUDGET = 64 * 1024  # well under the socket buffer, so a send never blocks
_INIT_FAILURES = 3


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type_name: str
    message: str
    traceback: str
    cause: str  # "exception", "lost" or "timeout"


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


class PoolInitError(TaskqError):
    """The pool initializer failed in several pool processes in a row."""


class _Worker:
    __slots__ = ("alive", "broken", "conn", "held", "init_failed", "lock", "over", "pid", "pidfd",
                 "proc", "reads", "ready", "retiring", "sent", "sentinel", "slot", "tasks_left",
                 "unread", "wake")

    def __init__(self, proc: Any, conn: Connection, slot: Any, lock: Any,
                 tasks_left: int | None) -> None:
        self.proc, self.conn, self.slot, self.lock = proc, conn, slot, lock
        self.tasks_left = tasks_left
        self.pid: int = proc.pid
        self.sentinel: int = proc.sentinel
        self.pidfd: int | None = None
        self.held: dict[int, Job] = {}  # seq -> job sent and not yet reported
        self.sent: deque[int] = deque()  # sizes of messages the child has not acked
        self.unread = self.reads = 0
        self.alive = True
        self.ready = self.broken = self.init_failed = self.retiring = self.over = False
        self.wake = INF  # announced hard deadline: wake by then even if the slot says inf


_live_pools: weakref.WeakSet[SupervisedPool] = weakref.WeakSet()


@atexit.register
def _terminate_all() -> None:  # runs before multiprocessing's own atexit join
    for p in list(_live_pools):
        p.terminate()


def _how_died(pid: int, code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"pool process {pid} was killed by signal {name}"
    return f"pool process {pid} exited with code {code}"


class SupervisedPool:
    def __init__(self, procs: int, runner: Runner, *,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 hard_timeout_grace: float = 5.0) -> None:
        if procs < 1:
            raise ConfigError(f"procs must be at least 1, got {procs}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ConfigError(f"max_tasks_per_child must be at least 1, got {max_tasks_per_child}")
        self._procs, self._runner = procs, runner
        self._initializer, self._initargs = initializer, initargs
        self._max_tasks, self._max_memory = max_tasks_per_child, max_memory_per_child
        self._grace = hard_timeout_grace
        self._workers: list[_Worker] = []
        self._queue: deque[Job] = deque()
        self._done: list[Done] = []
        self._in_flight = 0
        self._seq = 0
        self._ema: float | None = None
        self._depth = 1  # one job each until durations are known: long jobs stay balanced
        self._init_streak = 0
        self._init_error: str | None = None
        self._started = self._closing = False

    # -- lifecycle

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        _live_pools.add(self)
        n = self._max_tasks
        for i in range(self._procs):  # staggered budgets: recycling comes due in turn
            self._spawn(None if n is None else max(1, n - i * n // self._procs))

    def __enter__(self) -> SupervisedPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def close(self, timeout: float = 10.0) -> None:
        """Stop dispatching, let children finish what they hold, then stop them."""
        self._closing = True
        end = time.monotonic() + timeout
        while any(w.held for w in self._workers) and time.monotonic() < end:
            self._pump(end - time.monotonic(), ())
        for w in self._workers:
            self._send(w, EXIT)
        left = {w.sentinel: w for w in self._workers}
        while left and (ready := wait(list(left), max(0.05, end - time.monotonic()))):
            for s in [s for s in left if s in ready]:
                self._death(left.pop(s))
        self.terminate()  # whoever did not exit in time

    def terminate(self) -> None:
        """SIGKILL every child now and reap it; its running job is reported lost."""
        self._closing = True
        for w in self._workers:
            w.proc.kill()
        for w in list(self._workers):
            self._death(w)
        _live_pools.discard(self)

    # -- the interface the node uses

    def submit(self, jobs: Iterable[Job]) -> None:
        before = len(self._queue)
        self._queue.extend(jobs)
        self._in_flight += len(self._queue) - before
        self._dispatch()

    def withdraw_queued(self) -> list[Job]:
        jobs = list(self._queue)
        self._queue.clear()
        self._in_flight -= len(jobs)
        return jobs

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle_capacity(self) -> int:
        return max(0, self._procs * self._depth - self._in_flight)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.proc.is_alive()]

    def poll(self, timeout: float | None, also_wait: Sequence[Any] = ()) -> list[Done]:
        """Wait up to ``timeout`` (None: until something happens); return finished jobs."""
        self._check_init()
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._dispatch()
        while True:
            if self._done:
                wait_for: float | None = 0.0
            else:
                wait_for = None if end is None else max(0.0, end - time.monotonic())
            event = self._pump(wait_for, also_wait)
            self._check_init()
            self._dispatch()
            if self._done or event or wait_for == 0.0:
                break
            if end is not None and time.monotonic() >= end:
                break
        out, self._done = self._done, []
        self._in_flight -= len(out)
        return out

    # -- internals

    def _spawn(self, budget: int | None = None) -> None:
        conn, child_conn = _CTX.Pipe(duplex=True)
        slot = _CTX.RawArray("d", [-1.0, 0.0, INF, 0.0, 0.0])
        lock = _CTX.Lock()
        foreign = [w.conn for w in self._workers] + [conn]  # the child must not hold these
        proc = _CTX.Process(
            target=child_main, name="taskq-pool",
            args=(child_conn, slot, lock, self._runner, self._initializer, self._initargs,
                  self._max_memory, self._grace, os.getpid(), foreign))
        proc.start()
        child_conn.close()
        w = _Worker(proc, conn, slot, lock, budget or self._max_tasks)
        # A pidfd fires at exit even if a grandchild inherited proc.sentinel's pipe.
        with contextlib.suppress(AttributeError, OSError):
            w.pidfd = w.sentinel = os.pidfd_open(w.pid)
        self._workers.append(w)

    def _check_init(self) -> None:
        if self._init_error is not None:
            raise PoolInitError(self._init_error)

    def _pump(self, timeout: float | None, also_wait: Sequence[Any]) -> bool:
        """One wait and everything it brings; True if a child died or also_wait is ready."""
        owners: dict[int, tuple[_Worker, bool]] = {}
        objs: list[Any] = []
        deadline = steal_at = INF
        for w in self._workers:
            owners[id(w.conn)] = (w, False)
            owners[id(w.sentinel)] = (w, True)
            objs.append(w.conn)
            objs.append(w.sentinel)
            deadline = min(deadline, w.wake)
            if int(w.slot[0]) in w.held:
                deadline = min(deadline, w.slot[2])
            if self._stealable(w):  # when it would count as stuck
                steal_at = min(steal_at, w.slot[1] + _LONG_JOB)
        objs.extend(also_wait)
        if steal_at < INF and self._has_idle():
            deadline = min(deadline, steal_at)
        if deadline < INF:
            until = max(0.0, deadline - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        if not objs and timeout is None:
            return True  # nothing could ever wake us
        event = False
        for obj in wait(objs, timeout):
            owner = owners.get(id(obj))
            if owner is None:
                event = True
                continue
            w, is_sentinel = owner
            if not w.alive:
                continue
            if is_sentinel or not self._read(w):
                if not is_sentinel and not wait([w.sentinel], 1.0):
                    w.proc.kill()  # it closed its pipe but lives on: useless
                self._death(w)
                event = True
        now = time.monotonic()
        for w in list(self._workers):
            if w.wake <= now:
                w.wake = INF
            if w.slot[2] <= now and int(w.slot[0]) in w.held:
                w.proc.kill()
                self._death(w, timed_out=True)
                event = True
        return event

    def _read(self, w: _Worker, limit: int = 64) -> bool:
        """Take what the child sent (at most ``limit`` messages); False at EOF."""
        try:
            for _ in range(limit):
                if not w.conn.poll():
                    break
                self._on_message(w, w.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        return True

    def _on_message(self, w: _Worker, data: bytes) -> None:
        msg = pickle.loads(data)
        kind = msg[0]
        if kind == RES:
            self._on_results(w, *msg[1:])
        elif kind == ARM:
            w.wake = min(w.wake, msg[1])
        elif kind == OVER:  # over its memory limit, waiting for a verdict
            w.over = True
            w.retiring = not self._recycling(but=w)
            self._send(w, EXIT if w.retiring else GO_ON)
        elif kind == READY:
            w.ready = True
            self._init_streak = 0
        elif kind == INIT_FAIL:
            w.init_failed = True
            self._init_failure("{}: {}".format(*msg[1]))

    def _init_failure(self, text: str) -> None:
        self._init_streak += 1
        if self._init_streak >= _INIT_FAILURES and self._init_error is None:
            self._init_error = (f"pool initializer failed {self._init_streak} times in a row: "
                                + " ".join(text.split()))

    def _on_results(self, w: _Worker, reads: int, seqs: list[int], durs: list[float],
                    errs: list[tuple[int, ErrorTriple]], blob: bytes) -> None:
        while w.reads < reads and w.sent:
            w.unread -= w.sent.popleft()
            w.reads += 1
        n = len(seqs)
        try:
            vals = pickle.loads(blob)
        except Exception as exc:
            vals = [None] * n
            bad = describe_exception(exc)
            errs = [(i, bad) for i in range(n)]
        mean = sum(durs) / n
        ema = self._ema = mean if self._ema is None else self._ema + (1 - 0.9**n) * (
            mean - self._ema)
        self._depth = (1 if ema >= _CHUNK_SECONDS else
                       max(2, min(_MAX_DEPTH, math.ceil(_CHUNK_SECONDS / max(ema, 1e-9)))))
        held, out = w.held, self._done
        if not errs:
            for seq, val, dur in zip(seqs, vals, durs, strict=True):
                out.append(Done(held.pop(seq).key, val, None, dur))
            return
        failed = dict(errs)
        for i, seq in enumerate(seqs):
            e = failed.get(i)
            out.append(Done(held.pop(seq).key, vals[i],
                            None if e is None else ErrorInfo(*e, "exception"), durs[i]))

    def _death(self, w: _Worker, *, timed_out: bool = False) -> None:
        """Account for a child that has died or was just SIGKILLed, then replace it."""
        w.alive = False
        self._workers.remove(w)
        w.proc.join()  # dead or killed: the blocking waitpid returns at once
        self._read(w, sys.maxsize)  # results it sent before dying are real
        if not (w.ready or w.init_failed or self._closing):  # e.g. os._exit() in initializer
            self._init_failure(f"{_how_died(w.pid, w.proc.exitcode)} during initialization")
        now = time.monotonic()
        job = w.held.pop(int(w.slot[0]), None)
        if job is not None:
            elapsed = max(0.0, now - w.slot[1])
            if timed_out:
                err = ErrorInfo("TaskTimeoutError",
                                f"pool process {w.pid} was killed after {elapsed:.3g} s: the task "
                                f"overran its time limit plus {self._grace:g} s grace", "",
                                "timeout")
            else:
                err = ErrorInfo("WorkerLostError",
                                f"{_how_died(w.pid, w.proc.exitcode)} while running the task",
                                "", "lost")
            self._done.append(Done(job.key, None, err, elapsed))
        self._queue.extendleft(reversed(list(w.held.values())))  # unstarted: run elsewhere
        w.held.clear()
        w.conn.close()
        w.proc.close()
        if w.pidfd is not None:
            os.close(w.pidfd)
        if not self._closing and self._init_error is None:
            self._spawn()

    def _send(self, w: _Worker, data: bytes) -> None:
        if w.broken:
            return
        try:
            w.conn.send_bytes(data)
        except OSError:
            w.broken = True  # dead: its sentinel will fire and _death requeues
            return
        w.sent.append(len(data))
        w.unread += len(data)

    def _busy_long(self, w: _Worker, now: float) -> bool:
        return bool(w.slot[0] >= 0 and now - w.slot[1] > _LONG_JOB)

    def _has_idle(self) -> bool:
        return not self._queue and any(
            w.ready and not w.held and not w.broken and not w.retiring and w.tasks_left != 0
            for w in self._workers)

    def _retire_one(self) -> None:
        """Tell one process that is due for recycling (its task budget is spent and its
        jobs are done, or it is over its memory limit) to exit, unless a sibling is still
        being replaced; it finishes what it holds, exits, and _death replaces it."""
        if self._recycling():
            return
        for w in self._workers:
            if (w.tasks_left == 0 and not w.held) or w.over:
                w.retiring = True
                self._send(w, EXIT)
                return

    def _recycling(self, but: _Worker | None = None) -> bool:
        return any(w is not but and (w.retiring or w.broken or not w.ready)
                   for w in self._workers)

    @staticmethod
    def _stealable(w: _Worker) -> bool:
        """Does it hold jobs queued behind the one it is running?"""
        return bool(w.held and w.slot[0] >= 0 and next(reversed(w.held)) > w.slot[0])

    def _dispatch(self) -> None:
        if self._closing:
            return
        self._retire_one()
        now = time.monotonic()
        if self._has_idle():
            for w in self._workers:  # an idle child and one stuck on a long job: rebalance
                if self._stealable(w) and self._busy_long(w, now):
                    self._steal(w)
        q = self._queue
        for w in self._workers:
            if not q:
                return
            if not w.ready or w.broken or w.retiring:
                continue
            room = self._depth - len(w.held)
            if w.tasks_left is not None:
                room = min(room, w.tasks_left)
            if room <= 0 or (w.held and self._busy_long(w, now)):
                continue
            n = min(room, -(-len(q) // self._procs))  # fair share of the queue
            jobs = [q.popleft() for _ in range(n)]
            data = self._pack(jobs)
            if data is None:
                continue
            if w.held and w.unread + len(data) > _UNREAD_BUDGET:  # busy: only what fits
                fit = max(0, _UNREAD_BUDGET - w.unread) * len(jobs) // len(data)
                q.extendleft(reversed(jobs[fit:]))
                del jobs[fit:]
                data = self._pack(jobs) if jobs else None
                if data is None:
                    continue
            seq = self._seq
            self._seq += len(jobs)
            w.held.update(zip(range(seq, self._seq), jobs, strict=True))
            if w.tasks_left is not None:
                w.tasks_left -= len(jobs)
            self._send(w, data)

    def _steal(self, w: _Worker) -> None:
        """Take back the jobs queued behind a long-running one (the child skips them)."""
        if not w.lock.acquire(timeout=0.05):  # a child killed inside the lock must not hang us
            return
        try:
            first = w.slot[0] + 1
            if first <= 0:
                return
            w.slot[3], w.slot[4] = first, self._seq  # every seq it holds is below self._seq
        finally:
            w.lock.release()
        stolen = [seq for seq in w.held if seq >= first]
        self._queue.extendleft(reversed([w.held.pop(seq) for seq in stolen]))
        if w.tasks_left is not None:
            w.tasks_left += len(stolen)

    def _pack(self, jobs: list[Job]) -> bytes | None:
        """Pickle a chunk; unpicklable payloads fail here as their job's error."""
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
                self._done.append(Done(j.key, None, ErrorInfo(*describe_exception(exc), "exception"),
                                       0.0))
            else:
                good.append(j)
        jobs[:] = good
        if not good:
            return None
        return pickle.dumps([(seq + i, j.payload) for i, j in enumerate(good)], P)
