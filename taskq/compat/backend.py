"""What every stdlib look-alike stands on: :class:`Backend` and chunk sizing.

:class:`Backend` is what the Executor, :class:`taskq.Pool` and Process/Value share: a Client, maybe a
local cluster, the pickling context (namespace and initializer on the workers), the set
of outstanding futures, and chunk sizing. How each call travels (by name or pickled in a
signed payload) is the Client's one rule (:mod:`taskq.client.calls`); the Backend only
hands it this Pool's pickling context. Every chunk's Future resolves with a
:class:`~taskq.message.ChunkResult`.

Nothing here keeps a caller's callable alive: chunk sizes are measured per function but
held by weak reference (a bound method's by its plain function, so its object is freed).
A Backend never refers to its Executor/Pool, so they can be collected and shut it down.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures as cf
from concurrent.futures import Future
from typing import Any

from taskq import signed
from taskq.broker import procs_serving
from taskq.client.calls import CallOptions
from taskq.client.client import Client
from taskq.config import env_queue, env_url
from taskq.cpus import available_cpus
from taskq.errors import TaskqError, WorkerLostError
from taskq.local import lifetime
from taskq.local.cluster import LocalCluster

_MAX_CHUNK_BYTES = 8 * 1024 * 1024  # pickled data per message: well under the node's limit
_TARGET_CHUNK_SECONDS = 0.05  # work per auto-sized chunk once task time is known
_MAX_AUTO_ITEMS = 200_000
_NO_RESULT = CallOptions(keep_result=False)  # Futures get the reply; nothing is stored

ChunkSize = int | str | None


class AutoChunker:
    """Chunk sizes from the measured time per item and per round trip."""

    def __init__(self) -> None:
        self.item_time: float | None = None  # EMA of seconds per item on the workers
        self.overhead = 0.002  # EMA of a chunk's round trip beyond its work
        self.largest = 1
        self._lock = threading.Lock()

    def observe(self, items: int, work: float | None, wall: float) -> None:
        with self._lock:
            if work is not None and items > 0:
                per = work / items
                self.item_time = per if self.item_time is None else 0.7 * self.item_time + 0.3 * per
                # The least recent round trip: waiting behind other chunks is not overhead.
                self.overhead = min(max(0.0, wall - work), self.overhead * 1.05 + 1e-5)
            self.largest = max(self.largest, items)

    def _by_time(self) -> int | None:
        if self.item_time is None:
            return None
        target = max(_TARGET_CHUNK_SECONDS, 20 * self.overhead)
        return max(1, min(_MAX_AUTO_ITEMS, int(target / max(self.item_time, 1e-9))))

    def for_map(self, n: int, procs: int) -> int:
        """A known number of items: 4 chunks per process, like the stdlib, until task
        times are known; then smaller chunks (~50 ms of work) when items are slow, and
        fewer, bigger ones (down to one per process) when 4 per process would each be
        worth less than ~20 round trips."""
        balanced = max(1, math.ceil(n / (4 * procs)))
        by_time = self._by_time()
        if by_time is None or self.item_time is None:
            return balanced
        if by_time < balanced:
            return by_time
        worth = 20 * self.overhead / max(self.item_time, 1e-9)  # items per worthwhile chunk
        if balanced >= worth:
            return balanced
        chunks = max(1, math.ceil(n / worth / procs)) * procs  # a multiple of procs
        return max(1, math.ceil(n / chunks))

    def for_stream(self) -> int:
        """An unknown number of items: start at one and at most double each time."""
        by_time = self._by_time()
        if by_time is None:
            return 1
        return max(1, min(by_time, 2 * self.largest))


class Backend:
    """A Client on one queue (and the local cluster behind it, in local mode)."""

    def __init__(
        self, url: str | None, *, queue: str | None, procs: int | None, secret: bytes | str | None,
        initializer: Callable[..., object] | None, initargs: Sequence[Any],
        max_tasks: int | None, kind: str,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        url = url or env_url()  # none: local mode
        queue = queue or env_queue()  # like Client: TASKQ_QUEUE, else the default queue
        self.cluster: LocalCluster | None = None
        if url is None:
            self.cluster = LocalCluster(procs, queue=queue, max_tasks_per_child=max_tasks,
                                        on_death=self._node_died).start()
            url, secret = self.cluster.url, self.cluster.secret
        try:
            self.client = Client(url, queue=queue, secret=secret)
        except BaseException:
            if self.cluster is not None:
                self.cluster.stop()
            raise
        self.context = signed.Context(f"{kind}-{self.client.client_id}", initializer, initargs,
                                       None if self.cluster is not None else max_tasks)
        self.procs = self.cluster.procs if self.cluster is not None else (procs or self._remote_procs())
        self._chunkers: dict[int, tuple[Callable[[], Any], AutoChunker]] = {}
        self._outstanding: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()
        self.closed = False

    def _remote_procs(self) -> int:
        try:
            total = procs_serving(self.client.redis, self.client.queue)
        except Exception:
            total = 0
        return total or available_cpus()

    # -- sending --------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any] | str, args: Sequence[Any],
             kwargs: dict[str, Any]) -> Future[Any]:
        """``fn(*args, **kwargs)`` on a worker. An argument or function that cannot be
        pickled fails the returned Future (like the stdlib); a missing secret raises."""
        try:
            msg = self.client.message(fn, args, kwargs, context=self.context, options=_NO_RESULT)
        except TaskqError:
            raise
        except Exception as exc:
            return _failed(exc)
        return self._track(self.client.submit_message(msg))

    def chunks(self, fn: Callable[..., Any] | str, items: list[Any], star: bool,
               size: int) -> Iterator[tuple[int, Future[Any]]]:
        """Send ``items`` in chunks of ``size``; yields (item count, Future) per message.
        A chunk that pickles too big is split; one that cannot be pickled fails its Future."""
        for start in range(0, len(items), size):
            yield from self._chunk(fn, items[start:start + size], star)

    def _chunk(self, fn: Callable[..., Any] | str, items: list[Any],
               star: bool) -> Iterator[tuple[int, Future[Any]]]:
        try:
            msg = self.client.message(fn, items, chunk=True, star=star, context=self.context,
                                      options=_NO_RESULT)
        except TaskqError:
            raise
        except Exception as exc:
            yield len(items), _failed(exc)
            return
        if len(msg.payload or b"") > _MAX_CHUNK_BYTES and len(items) > 1:
            half = len(items) // 2
            yield from self._chunk(fn, items[:half], star)
            yield from self._chunk(fn, items[half:], star)
            return
        fut = self.client.submit_message(msg)
        sent, n, chunker = time.monotonic(), len(items), self.chunker(fn)

        def measure(f: Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None:
                chunker.observe(n, f.result().duration, time.monotonic() - sent)

        fut.add_done_callback(measure)
        yield n, self._track(fut)

    def chunker(self, fn: Any) -> AutoChunker:
        """Measurements are per function: a quick one must not inherit a slow one's sizes.
        Held weakly where the callable allows it (a task name or a builtin is kept as is)."""
        target = fn.__func__ if isinstance(fn, types.MethodType) else fn
        hit = self._chunkers.get(id(target))
        if hit is None or hit[0]() is not target:
            if len(self._chunkers) >= 64:
                self._chunkers.clear()
            try:
                ref: Callable[[], Any] = weakref.ref(target)
            except TypeError:  # a name or a builtin: nothing worth freeing behind it
                ref = functools.partial(_same, target)
            hit = self._chunkers[id(target)] = (ref, AutoChunker())
        return hit[1]

    def chunksize(self, fn: Any, chunksize: ChunkSize, n: int | None) -> int:
        if chunksize is None or chunksize == "auto":
            chunker = self.chunker(fn)
            return chunker.for_map(n, self.procs) if n is not None else chunker.for_stream()
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive integer or 'auto', got {chunksize!r}")
        return chunksize

    # -- bookkeeping ----------------------------------------------------------------------

    def _track(self, fut: Future[Any]) -> Future[Any]:
        with self._lock:
            self._outstanding.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(fut)

    def outstanding(self) -> list[Future[Any]]:
        with self._lock:
            return list(self._outstanding)

    def wait_all(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while pending := self.outstanding():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            cf.wait(pending, left)
        return True

    def fail_all(self, exc: BaseException) -> None:
        for fut in self.outstanding():
            if not fut.done():
                with contextlib.suppress(cf.InvalidStateError):  # resolved meanwhile
                    fut.set_exception(exc)

    def _node_died(self, reason: str) -> None:
        self.fail_all(WorkerLostError(reason))

    def close(self, *, kill: bool = False) -> None:
        with self._close_lock:  # from shutdown, a finalizer's thread and exit at once
            if self.closed:
                return
            self.closed = True
        lifetime.cancel(self.finish)
        self.client.close()
        if self.cluster is not None:
            self.cluster.stop(kill=kill)

    def finish(self) -> None:
        """Let the outstanding futures resolve, then close (the stdlib's exit behaviour)."""
        if not self.closed:
            self.wait_all()
        self.close()

    def finish_later(self) -> None:
        """:meth:`finish` in a thread: for a finalizer, which must not block the thread
        that happened to drop the last reference (at exit, :meth:`finish` still waits)."""
        if not self.closed:
            threading.Thread(target=self.finish, name="taskq-backend-finish", daemon=True).start()


def _same(obj: Any) -> Any:
    return obj


def _failed(exc: BaseException) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut
