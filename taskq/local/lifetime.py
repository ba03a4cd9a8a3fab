"""The one owner of what happens at interpreter exit in local mode.

Local mode (an Executor, Pool, Process or Value made with no URL) runs an embedded Redis
and a node subprocess behind the program's back; at exit they must go in the right
order, or work is lost (a Value written back to a Redis that is already gone) or a
redis-server outlives the program. Every module that holds such state registers a
callback here, in one of these phases, and one ``atexit`` hook runs them in order:

1. :attr:`Phase.FINISH_WORK` -- work finishes, like the stdlib: Executors wait for their
   pending futures, non-daemon Processes are joined. Needs the node and Redis.
2. :attr:`Phase.RELEASE_SHARED` -- shared state is handed back: Value/Lock leases write
   their cached values back to Redis. Needs Redis.
3. Local clusters stop: :attr:`Phase.STOP_NODES` (the node subprocess, the default
   backend's client) and then :attr:`Phase.STOP_SERVERS` (every embedded redis-server).

Within a phase, callbacks run last-registered first (like ``atexit``). A callback that
fails (or is interrupted by Ctrl-C while waiting) is reported on stderr and the later
ones still run, so the servers are always stopped.

A SIGKILL runs no hook: for that, every child local mode starts (node, redis-server) is
told by the kernel to die with its parent (:func:`die_with_parent`, Linux
``PR_SET_PDEATHSIG``), and temp dirs named after a dead owner are removed on the next
start (:func:`remove_stale_dirs`).
"""

from __future__ import annotations

import atexit
import enum
import glob
import os
import shutil
import sys
import threading
from collections.abc import Callable

from taskq.procs import die_with_parent

__all__ = ["Phase", "at_exit", "cancel", "die_with_parent", "owned_prefix", "pending",
           "remove_stale_dirs", "run_all"]

Callback = Callable[[], object]


class Phase(enum.IntEnum):
    FINISH_WORK = 1
    RELEASE_SHARED = 2
    STOP_NODES = 3
    STOP_SERVERS = 4


_callbacks: list[tuple[Phase, Callback]] = []
_lock = threading.Lock()


def at_exit(phase: Phase, callback: Callback) -> None:
    """Run ``callback()`` at interpreter exit, in ``phase``; registering twice is once."""
    with _lock:
        if (phase, callback) not in _callbacks:
            _callbacks.append((phase, callback))


def cancel(callback: Callback) -> None:
    """Forget ``callback`` (compared with ``==``, so a bound method matches itself)."""
    with _lock:
        _callbacks[:] = [(p, cb) for p, cb in _callbacks if cb != callback]


def pending() -> list[tuple[Phase, Callback]]:
    """What :func:`run_all` would call now, in its order."""
    with _lock:
        ordered = list(reversed(_callbacks))
    return sorted(ordered, key=lambda item: item[0])  # stable: LIFO within a phase


def run_all() -> None:
    """Run (and forget) every callback, phase by phase: the atexit hook."""
    for phase, callback in pending():
        cancel(callback)
        try:
            callback()
        except BaseException as exc:  # later phases must run regardless (Ctrl-C included)
            name = getattr(callback, "__qualname__", repr(callback))
            sys.stderr.write(f"taskq: at exit ({phase.name.lower()}), {name} failed: "
                             f"{type(exc).__name__}: {exc}\n")


atexit.register(run_all)

# die_with_parent (imported above) is what every Popen here passes as preexec_fn: the
# kernel sends the child SIGTERM when this parent dies. It follows the thread that
# forked: local mode starts its children from the thread that makes the first
# Executor/Pool, and they stop with it at exit anyway.


def owned_prefix(kind: str) -> str:
    """The prefix of a temp dir this process owns: ``taskq-<kind>-<pid>-``."""
    return f"taskq-{kind}-{os.getpid()}-"


def remove_stale_dirs(kind: str, parents: tuple[str, ...]) -> list[str]:
    """Remove this user's ``taskq-<kind>-<pid>-*`` dirs under ``parents`` whose owner pid
    is gone (a SIGKILLed program left them); the ones removed."""
    removed = []
    for parent in dict.fromkeys(parents):
        for path in glob.glob(os.path.join(parent, f"taskq-{kind}-*-*")):
            pid_text = os.path.basename(path)[len(f"taskq-{kind}-"):].split("-", 1)[0]
            try:
                if not pid_text.isdigit() or os.stat(path).st_uid != os.getuid():
                    continue
                os.kill(int(pid_text), 0)
            except ProcessLookupError:  # the owner is gone
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            except OSError:  # alive (another user's), or vanished meanwhile
                continue
    return removed
