"""Process plumbing every side shares: a child that dies with its parent.

Below both ``node/`` and ``local/`` (neither may import the other), so the one Linux
``PR_SET_PDEATHSIG`` call and the set-up of a forked helper process live here once:

- :func:`die_with_parent`: the kernel signals this process when its parent dies,
  SIGKILL included (also safe as a ``Popen`` ``preexec_fn``: no locks, no imports);
- :func:`detach_forked_child`: what a process forked from the node parent does first
  (pool processes, the metrics server): leave Ctrl-C and the parent's wake-up fd to the
  parent, die with it, and exit at once if it is already gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only;
    elsewhere a no-op). It follows the thread that forked, not the whole process."""
    if _libc is not None:
        with contextlib.suppress(AttributeError, OSError):
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))


def detach_forked_child(parent_pid: int) -> None:
    """Set up a process just forked from ``parent_pid``: Ctrl-C is the parent's
    business, SIGTERM kills, the parent's event-loop pipe is not ours, and it dies with
    the parent even on SIGKILL (and at once if the parent is already gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the prctl: nobody would tell us
        os._exit(1)
