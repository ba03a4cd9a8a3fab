"""``taskq.Process`` and ``taskq.cpu_count``: the rest of what ``import taskq as
multiprocessing`` needs for the classic Process/Value/Lock programs.

A Process runs its target as one task on a worker node: ``start()`` sends it, ``join()``
waits for it. Processes, Values and Locks made without a URL share one *default
backend*: ``TASKQ_URL`` if set, else a local cluster (embedded Redis and a local node
with one process per CPU) started on first use and stopped at exit, after the
non-daemon Processes are joined and the Values written back (:mod:`taskq.local.lifetime`).
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

from taskq.broker import connect, procs_serving
from taskq.compat.backend import Backend
from taskq.config import env_queue, env_url
from taskq.cpus import available_cpus
from taskq.errors import ConfigError
from taskq.local import lifetime
from taskq.node.child import in_pool_process

_default: Backend | None = None
_default_lock = threading.Lock()
_counter = itertools.count(1)
_children: set[Future[Any]] = set()  # non-daemon Processes: waited for at exit


def default_backend() -> Backend:
    """The backend of Processes, Values and Locks made without a URL (started once)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            if in_pool_process() and not env_url():
                raise ConfigError("inside a task, give taskq.Value/Lock/Process a url= "
                                  "(or set TASKQ_URL on the worker nodes)")
            _default = Backend(None, queue=env_queue(),
                               procs=None, secret=None, initializer=None, initargs=(),
                               max_tasks=None, kind="process")
            lifetime.at_exit(lifetime.Phase.FINISH_WORK, _join_children)
            lifetime.at_exit(lifetime.Phase.STOP_NODES, _close_default)
        return _default


def _join_children() -> None:
    """Phase FINISH_WORK, like the stdlib: non-daemon Processes are joined at exit."""
    wait_futures(list(_children))


def _close_default() -> None:
    """Phase STOP_NODES: the Processes are joined and the Values written back by now."""
    backend = _default
    if backend is not None:
        backend.close(kill=True)


def cpu_count() -> int:
    """Processes available: the live nodes' total with ``TASKQ_URL`` set, else the CPUs
    this process may use (a container's CPU limit, not the host's count)."""
    url = env_url()
    local = available_cpus()
    if not url:
        return local
    try:
        with connect(url, socket_timeout=5.0, socket_connect_timeout=5.0) as client:
            total = procs_serving(client)
    except Exception:
        return local
    return total or local


class Process:
    """``multiprocessing.Process``: ``start``, ``join``, ``is_alive``, ``exitcode``.

    The target (or an overriding ``run``) runs as a task on a worker; a failure prints
    the remote traceback to stderr, as a child process would, and sets ``exitcode`` 1.
    """

    def __init__(self, group: None = None, target: Callable[..., object] | None = None,
                 name: str | None = None, args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, *, daemon: bool | None = None) -> None:
        assert group is None, "group argument must be None for now"
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self.name = name or f"Process-{next(_counter)}"
        self.daemon = bool(daemon)
        self._future: Future[Any] | None = None

    def run(self) -> None:
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self) -> None:
        if self._future is not None:
            raise AssertionError("cannot start a process twice")
        if type(self).run is Process.run:
            fn: Callable[..., object] = self._target or _nothing
            self._future = default_backend().call(fn, self._args, self._kwargs)
        else:
            self._future = default_backend().call(self.run, (), {})
        if not self.daemon:
            _children.add(self._future)
        self._future.add_done_callback(self._finished)

    def _finished(self, fut: Future[Any]) -> None:
        _children.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if exc is None or isinstance(exc, SystemExit):
            return
        cause = exc.__cause__
        text = str(cause) if cause is not None else "".join(traceback.format_exception(exc))
        sys.stderr.write(f"Process {self.name}:\n{text}")
        sys.stderr.flush()

    def join(self, timeout: float | None = None) -> None:
        if self._future is None:
            raise AssertionError("can only join a started process")
        wait_futures([self._future], timeout)

    def is_alive(self) -> bool:
        return self._future is not None and not self._future.done()

    @property
    def exitcode(self) -> int | None:
        fut = self._future
        if fut is None or not fut.done():
            return None
        if fut.cancelled():
            return -signal.SIGTERM
        exc = fut.exception()
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0 if exc is None else 1

    @property
    def pid(self) -> int | None:
        return None  # it runs on a worker node, possibly another machine

    ident = pid

    def terminate(self) -> None:
        """Best effort: a task not yet started never starts; a running one runs on."""
        if self._future is not None:
            self._future.cancel()

    kill = terminate

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:  # a subclass's run() travels with its object
        return {k: v for k, v in self.__dict__.items() if k not in ("_future",)}

    def __repr__(self) -> str:
        state = "initial" if self._future is None else ("started" if self.is_alive() else "stopped")
        return f"<taskq.Process name={self.name!r} {state}>"


def _nothing() -> None:
    pass
