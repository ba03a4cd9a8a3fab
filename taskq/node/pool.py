"""The supervised pool, parent side: the processes' lifecycle, crash attribution, recycling.

A pool of forked processes (their runtime is :mod:`taskq.node.child`, their forking
:mod:`taskq.node.spawn`), driven by a single-threaded parent's event loop; which process
gets which job is :mod:`taskq.node.dispatch`'s policy, when one is recycled
:mod:`taskq.node.recycle`'s (max tasks, max memory, one process at a time).

Like ``multiprocessing.Pool`` but with crash isolation (a dead child costs only the job
it was running), per-job hard timeouts, recycling, and adaptive chunking. The parent
never blocks: ``poll()`` waits on the children's pipes and sentinels (plus whatever the
caller adds) and does all supervision work itself. Through each child's shared slot the
parent attributes a death or an overrun to one job without a round trip per job, and
takes back jobs queued behind a long one (never run twice); unstarted jobs stuck behind
overrunning ones go to :meth:`SupervisedPool.take_surplus`, for the node to hand back.

Each process has a slot number (a replacement takes its predecessor's); every exit is
counted by reason and logged in one line where the death is handled
(:mod:`taskq.node.exits`), and :meth:`SupervisedPool.processes` describes the processes
for metrics and the heartbeat.

Cancel: :meth:`SupervisedPool.cancel` takes a job back if no process has started it, or
SIGKILLs the one process running it (the process is replaced, its initializer re-run);
either way the job comes back as a Done with an error of cause ``cancelled``. Progress
that a job sends over the pipe (``PROGRESS``) is kept, latest only, for the node to take
with :meth:`SupervisedPool.take_progress`.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait
from typing import Any

from taskq.errors import ConfigError, TaskqError
from taskq.node import recycle
from taskq.node.child import (
    ARM,
    EXIT,
    INF,
    INIT_FAIL,
    OVER,
    PROGRESS,
    READY,
    RES,
    Runner,
)
from taskq.node.dispatch import Dispatcher, Done, ErrorInfo, Job, Proc
from taskq.node.exits import (
    EXIT_REASONS,
    ProcInfo,
    Slots,
    cancelled_error,
    death_error,
    how_died,
    rss_of,
)
from taskq.node.spawn import live_pools, spawn
from taskq.outcome import ErrorTriple

__all__ = ["EXIT_REASONS", "Done", "ErrorInfo", "Job", "PoolInitError", "ProcInfo",
           "SupervisedPool", "rss_of"]

_INIT_FAILURES = 3
Progress = tuple[float, "float | None", dict[str, Any], float]
"""A job's last progress: (done, total, info, wall-clock time it was sent)."""


class PoolInitError(TaskqError):
    """The pool initializer failed in several pool processes in a row."""


class SupervisedPool:
    def __init__(self, procs: int, runner: Runner, *,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 hard_timeout_grace: float = 5.0, give_back_surplus: bool = False) -> None:
        if procs < 1:
            raise ConfigError(f"procs must be at least 1, got {procs}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ConfigError(f"max_tasks_per_child must be at least 1, got {max_tasks_per_child}")
        self._size, self._runner = procs, runner
        self._initializer, self._initargs = initializer, initargs
        self._max_tasks, self._max_memory = max_tasks_per_child, max_memory_per_child
        self._grace = hard_timeout_grace
        self._procs: list[Proc] = []
        self._dispatcher = Dispatcher(procs)
        self._done: list[Done] = []
        self._in_flight = 0
        self._init_streak = 0
        self._init_error: str | None = None
        self._started = self._closing = False
        self._progress: dict[Any, Progress] = {}
        self._cancels: set[Any] = set()  # held by a process that has not started them
        self._surplus: list[Job] = []  # taken back from hoarding, for the node to hand back
        self._trims = give_back_surplus  # only a caller that hands the surplus back
        self.slots = Slots(procs)

    # -- lifecycle

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        live_pools.add(self)
        for i, budget in enumerate(recycle.budgets(self._size, self._max_tasks)):
            self._spawn(i, budget)

    def __enter__(self) -> SupervisedPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def close(self, timeout: float = 10.0) -> None:
        """Stop dispatching, let children finish what they hold, then stop them."""
        self._closing = True
        end = time.monotonic() + timeout
        while any(p.held for p in self._procs) and time.monotonic() < end:
            self._pump(end - time.monotonic(), ())
        for p in self._procs:
            self._send(p, EXIT)
        left = {p.sentinel: p for p in self._procs}
        while left and (ready := wait(list(left), max(0.05, end - time.monotonic()))):
            for s in [s for s in left if s in ready]:
                self._death(left.pop(s))
        self.terminate()  # whoever did not exit in time

    def terminate(self) -> None:
        """SIGKILL every child now and reap it; its running job is reported lost."""
        self._closing = True
        for p in self._procs:
            p.proc.kill()
        for p in list(self._procs):
            self._death(p)
        live_pools.discard(self)

    # -- the interface the node uses

    def submit(self, jobs: Iterable[Job]) -> None:
        queue = self._dispatcher.queue
        before = len(queue)
        queue.extend(jobs)
        self._in_flight += len(queue) - before
        self._dispatch()

    def withdraw_queued(self) -> list[Job]:
        queue = self._dispatcher.queue
        jobs = list(queue)
        queue.clear()
        self._in_flight -= len(jobs)
        return jobs

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._dispatcher.queue)

    @property
    def idle_capacity(self) -> int:
        capacity = self._dispatcher.capacity(self._procs, time.monotonic())
        return max(0, capacity - self._in_flight)

    def take_surplus(self) -> list[Job]:
        """Unstarted jobs given up because running ones overran (no longer in flight;
        only with ``give_back_surplus``): the node hands them back to the queue."""
        out, self._surplus = self._surplus, []
        return out

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.proc.is_alive()]

    def cancel(self, key: Any) -> str | None:
        """Cancel the job ``key``: ``"queued"`` (taken back before any process started
        it), ``"running"`` (its process is SIGKILLed and replaced), ``"held"`` (a
        process holds it behind another job: it is killed as soon as it starts, unless it
        finishes first) or None if the pool does not have it. A cancelled job comes
        back from :meth:`poll` as a Done whose error has cause ``cancelled``."""
        queue = self._dispatcher.queue
        for job in queue:
            if job.key == key:
                queue.remove(job)
                self._done.append(Done(key, None, cancelled_error(0.0), 0.0))
                return "queued"
        for p in self._procs:
            running = p.running()
            if running is not None and running.key == key:
                p.proc.kill()
                self._death(p, cancelled=True)
                return "running"
            if any(job.key == key for job in p.held.values()):
                self._cancels.add(key)
                return "held"
        return None

    def take_progress(self) -> dict[Any, Progress]:
        """The latest progress of each job that sent some since the last call."""
        out, self._progress = self._progress, {}
        return out

    def processes(self) -> list[ProcInfo]:
        """The live processes, by slot."""
        return self.slots.describe(self._procs)

    def sample_rss(self) -> None:
        """Note each process's resident memory now (an OOM kill is told by it)."""
        for p in self._procs:
            p.rss = rss_of(p.pid)

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
            if self._cancels:
                self._chase_cancels()
            self._check_init()
            self._dispatch()
            if self._trim() or self._done or event or wait_for == 0.0:
                break
            if end is not None and time.monotonic() >= end:
                break
        out, self._done = self._done, []
        self._in_flight -= len(out)
        return out

    # -- internals

    def _spawn(self, index: int, budget: int | None = None) -> None:
        self._procs.append(spawn(index, budget or self._max_tasks, self._runner,
                                 self._initializer, self._initargs, self._max_memory,
                                 self._grace, [p.conn for p in self._procs]))

    def _check_init(self) -> None:
        if self._init_error is not None:
            raise PoolInitError(self._init_error)

    def _pump(self, timeout: float | None, also_wait: Sequence[Any]) -> bool:
        """One wait and everything it brings; True if a child died or also_wait is ready."""
        owners: dict[int, tuple[Proc, bool]] = {}
        objs: list[Any] = []
        for p in self._procs:
            owners[id(p.conn)] = (p, False)
            owners[id(p.sentinel)] = (p, True)
            objs.append(p.conn)
            objs.append(p.sentinel)
        objs.extend(also_wait)
        count = self._in_flight - len(self._done) if self._trims else 0
        deadline = self._dispatcher.wake_at(self._procs, count)
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
            p, is_sentinel = owner
            if not p.alive:
                continue
            if is_sentinel or not self._read(p):
                if not is_sentinel and not wait([p.sentinel], 1.0):
                    p.proc.kill()  # it closed its pipe but lives on: useless
                self._death(p)
                event = True
        return self._kill_overrunning() or event

    def _trim(self) -> bool:
        """Take back the surplus of unstarted jobs (:meth:`Dispatcher.surplus`); True if
        any, so that poll returns and the node hands them back at once."""
        count = self._in_flight - len(self._done)
        if not self._trims or count <= 2 * self._size:  # few: never worth taking
            return False
        got = self._dispatcher.surplus(self._procs, count, time.monotonic())
        self._in_flight -= len(got)
        self._surplus += got
        return bool(got)

    def _chase_cancels(self) -> None:
        """Cancelled jobs a process held behind another: kill it once one starts."""
        for key in list(self._cancels):
            self._cancels.discard(key)
            if self.cancel(key) == "held":
                self._cancels.add(key)

    def _kill_overrunning(self) -> bool:
        """SIGKILL the processes whose job is past its hard deadline; True if any."""
        now, killed = time.monotonic(), False
        for p in list(self._procs):
            if p.wake <= now:
                p.wake = INF
            if p.slot[2] <= now and p.running() is not None:
                p.proc.kill()
                self._death(p, timed_out=True)
                killed = True
        return killed

    def _read(self, p: Proc, limit: int = 64) -> bool:
        """Take what the child sent (at most ``limit`` messages); False at EOF."""
        try:
            for _ in range(limit):
                if not p.conn.poll():
                    break
                self._on_message(p, p.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        return True

    def _on_message(self, p: Proc, data: bytes) -> None:
        msg = pickle.loads(data)
        kind = msg[0]
        if kind == RES:
            self._on_results(p, *msg[1:])
        elif kind == ARM:
            p.wake = min(p.wake, msg[1])
        elif kind == OVER:  # over its memory limit, waiting for a verdict
            recycle.over_memory(p, self._procs, self._send)
        elif kind == PROGRESS:
            job = p.held.get(msg[1])
            if job is not None:
                self._progress[job.key] = (msg[2], msg[3], msg[4], msg[5])
        elif kind == READY:
            p.ready = True
            self._init_streak = 0
        elif kind == INIT_FAIL:
            p.init_failed = True
            self._init_failure("{}: {}".format(*msg[1]))

    def _init_failure(self, text: str) -> None:
        self._init_streak += 1
        if self._init_streak >= _INIT_FAILURES and self._init_error is None:
            self._init_error = (f"pool initializer failed {self._init_streak} times in a row: "
                                + " ".join(text.split()))

    def _on_results(self, p: Proc, reads: int, seqs: list[int], durs: list[float],
                    errs: list[tuple[int, ErrorTriple]], blob: bytes) -> None:
        p.acked(reads)
        self._done += self._dispatcher.results(p, seqs, durs, errs, blob)

    def _death(self, p: Proc, *, timed_out: bool = False, cancelled: bool = False) -> None:
        """Account for a child that has died or was just SIGKILLed, then replace it."""
        p.alive = False
        self._procs.remove(p)
        p.proc.join()  # dead or killed: the blocking waitpid returns at once
        self._read(p, sys.maxsize)  # results it sent before dying are real
        if not (p.ready or p.init_failed or self._closing):  # e.g. os._exit() in initializer
            self._init_failure(f"{how_died(p.pid, p.proc.exitcode)} during initialization")
        job = p.held.pop(int(p.slot[0]), None)
        self.slots.exited(p, timed_out=timed_out, running=job is not None,
                          closing=self._closing, max_memory=self._max_memory,
                          cancelled=cancelled)
        if job is not None:
            elapsed = max(0.0, time.monotonic() - p.slot[1])
            self._progress.pop(job.key, None)
            err = death_error(p, elapsed, timed_out=timed_out, cancelled=cancelled,
                              grace=self._grace)
            self._done.append(Done(job.key, None, err, elapsed))
        # unstarted: run elsewhere
        self._dispatcher.queue.extendleft(reversed(list(p.held.values())))
        p.held.clear()
        p.conn.close()
        p.proc.close()
        if p.pidfd is not None:
            os.close(p.pidfd)
        if not self._closing and self._init_error is None:
            self.slots.restarts[p.index] += 1
            self._spawn(p.index)

    def _send(self, p: Proc, data: bytes) -> None:
        if p.broken:
            return
        try:
            p.conn.send_bytes(data)
        except OSError:
            p.broken = True  # dead: its sentinel will fire and _death requeues
            return
        p.sent.append(len(data))
        p.unread += len(data)

    def _dispatch(self) -> None:
        if self._closing:
            return
        recycle.retire_one(self._procs, self._send)
        self._done.extend(self._dispatcher.dispatch(self._procs, self._send))

