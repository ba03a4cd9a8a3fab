"""The child runtime: what runs inside one pool process, from fork to exit.

A child reads chunks of ``(seq, payload)`` jobs from its pipe, runs each through the
runner, and sends results back in buffered batches. Before each job it claims it in its
shared slot ``[running seq or -1, start (monotonic), hard deadline or +inf, stolen-from
seq, stolen-to seq]`` under a lock, so the parent can attribute a death or an overrun to
exactly one job without a round trip, and take back jobs queued behind a long one (a
taken-back job is skipped, never run twice).

Messages to the parent (pickled tuples): ``(RES, reads, seqs, durations, errors, values
blob)``, ``(READY,)``, ``(INIT_FAIL, error)``, ``(ARM, hard deadline)``, ``(OVER,)``
(over the memory limit, asking whether to exit) and ``(PROGRESS, seq, done, total, info,
wall time)`` (the side channel of :func:`report_progress`, which the parent coalesces).
From the parent: a list of jobs, ``EXIT`` (None) or ``GO_ON`` (() : not your turn to
recycle yet).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from taskq.errors import TaskTimeoutError
from taskq.outcome import ErrorTriple, describe_exception
from taskq.procs import detach_forked_child

Runner = Callable[[Any], Any]

P = pickle.HIGHEST_PROTOCOL
INF = float("inf")
RES, READY, INIT_FAIL, ARM, OVER, PROGRESS = range(6)
EXIT = pickle.dumps(None, P)
GO_ON = pickle.dumps((), P)  # to a process over its memory limit: not your turn yet
FLUSH_SECONDS = 0.001  # a child sends buffered results at least this often...
FLUSH_COUNT = 256  # ...or once it holds this many
PROGRESS_EVERY = 0.05  # a child sends progress at most this often (the parent writes ~1/s)


class _Child:
    """This process's timing state: what the running job's time limit is."""

    __slots__ = ("announced", "conn", "grace", "in_job", "limit", "progress_at", "slot",
                 "timed")

    def __init__(self, conn: Connection, slot: Any, grace: float) -> None:
        self.conn, self.slot, self.grace = conn, slot, grace
        self.in_job = self.timed = False
        self.limit = 0.0
        self.announced = INF  # earliest hard deadline the parent was told about
        self.progress_at = 0.0  # when progress was last sent


_child: _Child | None = None


def in_pool_process() -> bool:
    """Is this a pool process of a node (code running as a task)?"""
    return _child is not None


def arm_timeout(seconds: float | None) -> None:
    """Set the running job's time limit (None: none). A no-op outside a pool job.

    At ``seconds`` TaskTimeoutError is raised inside the job; at ``seconds`` plus the
    pool's hard_timeout_grace the parent kills the process. Disarmed when the job ends.
    """
    c = _child
    if c is None or not c.in_job:
        return
    if seconds is None:
        if c.timed:
            _disarm(c)
        return
    c.limit = max(float(seconds), 0.001)
    c.timed = True
    now = time.monotonic()
    deadline = now + c.limit + c.grace
    c.slot[2] = deadline
    signal.setitimer(signal.ITIMER_REAL, c.limit)
    # The parent reads deadlines from the slot whenever it wakes; only wake it when it
    # might otherwise sleep past this one.
    if deadline < c.announced or now >= c.announced:
        c.announced = deadline
        with contextlib.suppress(OSError):
            c.conn.send_bytes(pickle.dumps((ARM, deadline), P))


def report_progress(done: float, total: float | None, info: dict[str, Any]) -> None:
    """Send the running job's progress to the parent (a no-op outside a pool job); sent
    at most every PROGRESS_EVERY s, except the last step (done == total)."""
    c = _child
    if c is None or not c.in_job:
        return
    now = time.monotonic()
    if now - c.progress_at < PROGRESS_EVERY and done != total:
        return
    c.progress_at = now
    seq = int(c.slot[0])
    try:
        data = pickle.dumps((PROGRESS, seq, done, total, info, time.time()), P)
    except Exception:  # an info value that cannot travel: the numbers still do
        data = pickle.dumps((PROGRESS, seq, done, total, {}, time.time()), P)
    with contextlib.suppress(OSError):
        c.conn.send_bytes(data)


def progress(done: float, total: float | None = None, **info: Any) -> None:
    """Report the running task's progress (``taskq.progress``): ``done`` out of
    ``total`` (None: unknown), plus any JSON-able ``info``. The producer reads it with
    ``client.progress(future)`` or an ``on_progress=`` callback; the node writes it at
    most once a second. A no-op outside a task, so a task can call it anywhere."""
    report_progress(done, total, info)


def _disarm(c: _Child) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    c.slot[2] = INF
    c.timed = False


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    c = _child
    if c is not None and c.in_job and c.timed:
        raise TaskTimeoutError(f"task exceeded its {c.limit:g} s time limit")


def _setup_signals(parent_pid: int) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    detach_forked_child(parent_pid)


def _rss_reader() -> Callable[[], int]:
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        import resource

        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    page = os.sysconf("SC_PAGE_SIZE")
    return lambda: int(os.pread(fd, 128, 0).split()[1]) * page


class _Loop:
    """The child's job loop: jobs in from the pipe, buffered results out."""

    def __init__(self, c: _Child, lock: Any, runner: Runner, max_memory: int | None) -> None:
        self.c, self.conn, self.slot, self.lock, self.runner = c, c.conn, c.slot, lock, runner
        self.rss = _rss_reader() if max_memory else None
        self.max_memory = max_memory or 0
        self.pending: deque[tuple[int, Any]] = deque()
        self.seqs: list[int] = []
        self.durs: list[float] = []
        self.vals: list[Any] = []
        self.errs: list[tuple[int, ErrorTriple]] = []
        self.reads = 0
        self.last_flush = time.monotonic()

    def receive(self) -> bool:
        """Take one message from the parent; False when told to exit."""
        msg = pickle.loads(self.conn.recv_bytes())
        self.reads += 1
        if msg is None:
            return False
        self.pending.extend(msg)
        return True

    def flush(self) -> None:
        vals = self.vals
        try:
            blob = pickle.dumps(vals, P)
        except Exception:  # find the unpicklable values: they fail alone
            for i, v in enumerate(vals):
                try:
                    pickle.dumps(v, P)
                except Exception as exc:
                    vals[i] = None
                    self.errs.append((i, describe_exception(exc)))
            blob = pickle.dumps(vals, P)
        self.conn.send_bytes(pickle.dumps((RES, self.reads, self.seqs, self.durs, self.errs, blob), P))
        self.seqs, self.durs, self.vals, self.errs = [], [], [], []
        self.last_flush = time.monotonic()

    def run_one(self, seq: int, payload: Any) -> float | None:
        """Run one job unless the parent took it back; its end time, or None if skipped."""
        slot, c = self.slot, self.c
        t0 = time.monotonic()
        with self.lock:  # claim it, unless the parent took it back to run elsewhere
            if slot[3] <= seq < slot[4]:
                return None
            slot[1] = t0
            slot[0] = seq
        value = None
        try:
            c.in_job = True
            try:
                value = self.runner(payload)
            finally:
                c.in_job = False
                if c.timed:
                    _disarm(c)
        except BaseException as exc:  # even SystemExit: the job fails, not the process
            self.errs.append((len(self.seqs), describe_exception(exc)))
        t1 = time.monotonic()
        slot[0] = -1.0
        self.seqs.append(seq)
        self.durs.append(t1 - t0)
        self.vals.append(value)
        return t1

    def ask_to_recycle(self) -> bool:
        """Over the memory limit: report, ask once, and wait for the verdict. True: exit."""
        self.rss = None
        self.flush()
        self.conn.send_bytes(pickle.dumps((OVER,), P))
        while (msg := pickle.loads(self.conn.recv_bytes())) != ():
            self.reads += 1
            if msg is None:
                return True
            self.pending.extend(msg)
        self.reads += 1
        self.last_flush = time.monotonic()
        return False

    def run(self) -> None:
        while True:
            if not self.pending:
                if self.seqs:
                    self.flush()
                if not self.receive():
                    return
                continue
            seq, payload = self.pending.popleft()
            t1 = self.run_one(seq, payload)
            if t1 is None:
                continue
            if self.rss is not None and self.rss() > self.max_memory:
                if self.ask_to_recycle():
                    return
                continue
            if len(self.seqs) >= FLUSH_COUNT or t1 - self.last_flush >= FLUSH_SECONDS:
                while self.conn.poll():  # take queued chunks first so the ack count is current
                    if not self.receive():
                        self.flush()
                        return
                self.flush()


def child_main(conn: Connection, slot: Any, lock: Any, runner: Runner,
               initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
               max_memory: int | None, grace: float, parent_pid: int,
               foreign: list[Connection]) -> None:
    """The target of every pool process."""
    global _child
    for other in foreign:  # siblings' pipes: holding them would hide their EOFs
        other.close()
    _setup_signals(parent_pid)
    c = _child = _Child(conn, slot, grace)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            conn.send_bytes(pickle.dumps((INIT_FAIL, describe_exception(exc)), P))
            sys.exit(1)
    conn.send_bytes(pickle.dumps((READY,), P))
    try:
        _Loop(c, lock, runner, max_memory).run()
    except (EOFError, OSError):  # the parent is gone
        return
    finally:
        conn.close()
