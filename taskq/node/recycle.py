"""Recycling, parent side: which pool process is told to exit (and be replaced), and when.

Recycling (max tasks, max memory) is the parent's decision, one process at a time: a
process is told to exit only while every sibling is up and initialized, so recycling
never takes more than one process's capacity at once. A process over its memory limit
asks (``OVER``) and exits at once if it may, else works on until its turn; the first
processes get staggered task budgets, so they do not all come due together.

The pool (:mod:`taskq.node.pool`) owns the processes and calls in here; the exit itself
is accounted for where the pool handles the death (:mod:`taskq.node.exits`).
"""

from __future__ import annotations

from collections.abc import Sequence

from taskq.node.child import EXIT, GO_ON
from taskq.node.dispatch import Proc, Send


def budgets(size: int, max_tasks: int | None) -> list[int | None]:
    """The first processes' task budgets, staggered so they come due in turn."""
    n = max_tasks
    return [None if n is None else max(1, n - i * n // size) for i in range(size)]


def recycling(procs: Sequence[Proc], but: Proc | None = None) -> bool:
    """Is a process (other than ``but``) being recycled or replaced right now?"""
    return any(p is not but and (p.retiring or p.broken or not p.ready) for p in procs)


def retire_one(procs: Sequence[Proc], send: Send) -> None:
    """Tell one process that is due (its task budget is spent and its jobs are done, or
    it is over its memory limit) to exit, unless a sibling is still being replaced; it
    finishes what it holds, exits, and the pool replaces it."""
    if recycling(procs):
        return
    for p in procs:
        if (p.tasks_left == 0 and not p.held) or p.over:
            p.retiring = True
            send(p, EXIT)
            return


def over_memory(p: Proc, procs: Sequence[Proc], send: Send) -> None:
    """``p`` is over its memory limit and waits for a verdict: exit now if no sibling is
    being recycled, else go on until its turn (:func:`retire_one`)."""
    p.over = True
    p.retiring = not recycling(procs, but=p)
    send(p, EXIT if p.retiring else GO_ON)
