"""Forking one pool process, parent side, and killing every live pool at interpreter exit.

A pool process gets a duplex pipe, its shared slot (layout in :mod:`taskq.node.child`)
and the slot's lock; it closes the parent's ends of its siblings' pipes. Its exit is
watched through a pidfd where the kernel has them: a pidfd fires at exit even if a
grandchild inherited the sentinel pipe of ``multiprocessing``.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from taskq.node.child import INF, Runner, child_main
from taskq.node.dispatch import Proc

_CTX = multiprocessing.get_context("fork")


class _Terminable(Protocol):
    def terminate(self) -> None: ...


live_pools: weakref.WeakSet[_Terminable] = weakref.WeakSet()
"""Pools started and not yet terminated: SIGKILLed at interpreter exit."""


@atexit.register
def _terminate_all() -> None:  # runs before multiprocessing's own atexit join
    for p in list(live_pools):
        p.terminate()


def spawn(index: int, budget: int | None, runner: Runner,
          initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
          max_memory: int | None, grace: float, siblings: Sequence[Connection]) -> Proc:
    """Fork the pool process of slot ``index`` with a task ``budget`` (None: no limit)."""
    conn, child_conn = _CTX.Pipe(duplex=True)
    slot = _CTX.RawArray("d", [-1.0, 0.0, INF, 0.0, 0.0])
    lock = _CTX.Lock()
    foreign = [*siblings, conn]  # the child must not hold these
    proc = _CTX.Process(
        target=child_main, name="taskq-pool",
        args=(child_conn, slot, lock, runner, initializer, initargs, max_memory, grace,
              os.getpid(), foreign))
    proc.start()
    child_conn.close()
    p = Proc(proc, conn, slot, lock, budget, index)
    with contextlib.suppress(AttributeError, OSError):
        p.pidfd = p.sentinel = os.pidfd_open(p.pid)
    return p
