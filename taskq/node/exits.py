"""Pool processes' history, parent side: each slot's exits by reason, restarts, tasks done,
and the error a dead process's running job gets (:func:`death_error`).

A pool process lives in a slot (0 … procs-1); its replacement takes the same slot. Every
exit is counted by reason (:data:`EXIT_REASONS`) and logged in one line, where the pool
handles the death; the pool's own shutdown is not counted. :meth:`Slots.describe` is what
metrics and :func:`procs_table` (the heartbeat's ``procs_table`` field) read: the pool's
records, no round trip to a child.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from taskq.node.dispatch import ErrorInfo, Job, Proc

log = logging.getLogger("taskq.node.pool")

EXIT_REASONS = ("crash", "signal", "oom", "timeout", "recycle_tasks", "recycle_memory",
                "init_failure", "cancel")
"""Why a pool process exited: a non-zero (or unasked) exit, a signal, SIGKILL while over
the memory limit, killed at a task's hard time limit, recycled after its task budget or
over its memory limit, its initializer failed (or it died before it was ready), killed
because its running task was cancelled."""
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_of(pid: int) -> int:
    """Resident bytes of ``pid`` from /proc/<pid>/statm (0 if gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def how_died(pid: int, code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"pool process {pid} was killed by signal {name}"
    return f"pool process {pid} exited with code {code}"


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One pool process as metrics and the heartbeat see it."""

    slot: int
    pid: int
    state: str  # busy (running a job), idle, starting (not yet initialized)
    job: Job | None  # the one it runs
    started: float  # when that job started (monotonic)
    done: int  # jobs finished in this slot, by this process and its predecessors
    restarts: int  # processes replaced in this slot
    last_exit: str | None  # reason of the last exit in this slot


class Slots:
    """Per-slot history of a pool of ``size`` processes, and exits by reason."""

    def __init__(self, size: int) -> None:
        self.exits = dict.fromkeys(EXIT_REASONS, 0)
        self.done = [0] * size  # jobs done by the slot's earlier processes
        self.restarts = [0] * size
        self.last_exit: list[str | None] = [None] * size

    def describe(self, procs: Sequence[Proc]) -> list[ProcInfo]:
        out = []
        for p in sorted(procs, key=lambda p: p.index):
            job = p.running() if p.ready else None
            state = "starting" if not p.ready else "idle" if job is None else "busy"
            i = p.index
            out.append(ProcInfo(i, p.pid, state, job, float(p.slot[1]), self.done[i] + p.done,
                                self.restarts[i], self.last_exit[i]))
        return out

    def exited(self, p: Proc, *, timed_out: bool, running: bool, closing: bool,
               max_memory: int | None, cancelled: bool = False) -> None:
        """Count and log one exit (not those of the pool's own shutdown)."""
        self.done[p.index] += p.done
        if closing:
            return
        reason = "cancel" if cancelled else exit_reason(p, timed_out, max_memory)
        self.exits[reason] += 1
        self.last_exit[p.index] = reason
        what = ("was killed at its task's hard time limit" if timed_out
                else "was killed: its task was cancelled" if cancelled
                else how_died(p.pid, p.proc.exitcode).split(" ", 3)[3])
        level = logging.INFO if reason.startswith(("recycle", "cancel")) else logging.WARNING
        log.log(level, "pool process %d (slot %d) exited, reason %s: it %s%s", p.pid, p.index,
                reason, what, " while running a task" if running else "",
                extra={"pid": p.pid, "slot": p.index, "reason": reason})


def exit_reason(p: Proc, timed_out: bool, max_memory: int | None) -> str:
    code = p.proc.exitcode
    if timed_out:
        return "timeout"
    if p.init_failed or not p.ready:
        return "init_failure"
    if code is not None and code < 0:
        # SIGKILL while it was last seen over its limit: the kernel's OOM killer, most likely
        over = max_memory is not None and p.rss > max_memory
        return "oom" if over and code == -signal.SIGKILL else "signal"
    if p.retiring and code == 0:
        return "recycle_memory" if p.over else "recycle_tasks"
    return "crash"


def procs_table(procs: Sequence[ProcInfo]) -> bytes:
    """The pool's processes as JSON rows {slot, pid, state, task, task_id, since, done,
    rss, restarts, last_exit}, the shape the dashboard's Node view and ``taskq info``
    read; ``since`` is wall-clock seconds (when the running task started)."""
    now_wall, now_mono = time.time(), time.monotonic()
    rows = []
    for p in procs:
        task = task_id = None
        since = None
        if p.job is not None:
            task, task_id = describe(p.job.payload)
            since = round(now_wall - (now_mono - p.started), 3)
        rows.append({"slot": p.slot, "pid": p.pid, "state": p.state, "task": task,
                     "task_id": task_id, "since": since, "done": p.done, "rss": rss_of(p.pid),
                     "restarts": p.restarts, "last_exit": p.last_exit})
    return orjson.dumps(rows)


def describe(payload: Any) -> tuple[str | None, str | None]:
    """Task name and id of an entry, from its JSON envelope (never its pickled part)."""
    body = getattr(payload, "body", None)
    try:
        env = orjson.loads(body) if isinstance(body, bytes) else None
    except orjson.JSONDecodeError:
        env = None
    if not isinstance(env, dict):
        return None, None
    name, task_id = env.get("t"), env.get("id")
    return (str(name)[:200] if name is not None else None,
            str(task_id)[:200] if task_id is not None else None)


def cancelled_error(elapsed: float) -> ErrorInfo:
    return ErrorInfo("CancelledError", f"cancelled after {elapsed:.3g} s", "", "cancelled")


def death_error(p: Proc, elapsed: float, *, timed_out: bool, cancelled: bool,
                grace: float) -> ErrorInfo:
    """The error of the job ``p`` was running when it died (or was killed)."""
    if cancelled:
        return cancelled_error(elapsed)
    if timed_out:
        return ErrorInfo("TaskTimeoutError",
                         f"pool process {p.pid} was killed after {elapsed:.3g} s: the task "
                         f"overran its time limit plus {grace:g} s grace", "", "timeout")
    return ErrorInfo("WorkerLostError",
                     f"{how_died(p.pid, p.proc.exitcode)} while running the task", "", "lost")
