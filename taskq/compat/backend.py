"""What every stdlib look-alike stands on: :class:`Backend` and chunk sizing.

:class:`Backend` is what the Executor, :class:`taskq.Pool` and Process/Value share: a Client, maybe a
local cluster, the pickling context (namespace and initializer on the workers), the set
of outstanding futures, and chunk sizing. Registered ``@task`` functions with plain-JSON
arguments travel by name; everything else travels pickled in signed payloads.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures as cf
from concurrent.futures import Future
from typing import Any

from taskq import registry, signed
from taskq.broker import procs_serving
from taskq.client.client import Client, _json_faithful
from taskq.errors import TaskqError, WorkerLostError, task_error
from taskq.local.cluster import LocalCluster

_MAX_CHUNK_BYTES = 8 * 1024 * 1024  # pickled data per message: well under the node's limit
_TARGET_CHUNK_SECONDS = 0.05  # work per auto-sized chunk once task time is known
_MAX_AUTO_ITEMS = 200_000

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
        self, url: str | None, *, queue: str, procs: int | None, secret: bytes | str | None,
        initializer: Callable[..., object] | None, initargs: Sequence[Any],
        max_tasks: int | None, kind: str,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        url = url or os.environ.get("TASKQ_URL") or None
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
        self._chunkers: dict[int, tuple[Any, AutoChunker]] = {}
        self._outstanding: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self.closed = False

    def _remote_procs(self) -> int:
        try:
            total = procs_serving(self.client.redis, self.client.queue)
        except Exception:
            total = 0
        return total or os.cpu_count() or 1

    # -- sending --------------------------------------------------------------------------

    @staticmethod
    def _registered(fn: Any) -> bool:
        if isinstance(fn, str):
            return True
        name = getattr(fn, "__taskq_name__", None)
        return isinstance(name, str) and registry.find_task(name) is not None

    def _by_name(self, fn: Any, args: Sequence[Any], kwargs: dict[str, Any] | None,
                 chunk: bool) -> bool:
        return self._registered(fn) and (isinstance(fn, str) or _json_faithful(args, kwargs, chunk))

    def call(self, fn: Callable[..., Any] | str, args: Sequence[Any],
             kwargs: dict[str, Any]) -> Future[Any]:
        """``fn(*args, **kwargs)`` on a worker. An argument or function that cannot be
        pickled fails the returned Future (like the stdlib); a missing secret raises."""
        try:
            if self._by_name(fn, args, kwargs, False):
                msg = self.client._message(fn, args, kwargs, keep_result=False)
            else:
                assert not isinstance(fn, str)
                msg = self.client.pickled_message(fn, signed.CALL, (tuple(args), kwargs),
                                                  context=self.context, keep_result=False)
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
            calls = (items if star else [(x,) for x in items]) if self._registered(fn) else None
            if calls is not None and self._by_name(fn, calls, None, True):
                msg = self.client._message(fn, calls, None, chunk=True, keep_result=False)
            else:
                assert not isinstance(fn, str)
                mode = signed.STARMAP if star else signed.MAP
                msg = self.client.pickled_message(fn, mode, items, context=self.context,
                                                  keep_result=False)
                if len(msg.payload or b"") > _MAX_CHUNK_BYTES and len(items) > 1:
                    half = len(items) // 2
                    yield from self._chunk(fn, items[:half], star)
                    yield from self._chunk(fn, items[half:], star)
                    return
        except TaskqError:
            raise
        except Exception as exc:
            yield len(items), _failed(exc)
            return
        fut = self.client.submit_message(msg)
        sent, n, chunker = time.monotonic(), len(items), self.chunker(fn)

        def measure(f: Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None:
                chunker.observe(n, getattr(f.result(), "duration", None),
                                     time.monotonic() - sent)

        fut.add_done_callback(measure)
        yield n, self._track(fut)

    def chunker(self, fn: Any) -> AutoChunker:
        """Measurements are per function: a quick one must not inherit a slow one's sizes."""
        hit = self._chunkers.get(id(fn))
        if hit is None or hit[0] is not fn:
            if len(self._chunkers) >= 64:
                self._chunkers.clear()
            hit = self._chunkers[id(fn)] = (fn, AutoChunker())
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
        if self.closed:
            return
        self.closed = True
        self.client.close()
        if self.cluster is not None:
            self.cluster.stop(kill=kill)


def _failed(exc: BaseException) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut


def chunk_items(result: Any) -> Iterator[tuple[bool, Any]]:
    """A chunk Future's result (pickled ChunkResult or JSON pairs) as (ok, value or exception)."""
    if isinstance(result, signed.ChunkResult):
        if not result.errors:
            for v in result.values:
                yield True, v
        else:
            yield from result
        return
    for ok, value in result:
        yield (True, value) if ok else (False, task_error(*value))


def chunk_values(result: Any) -> list[Any] | None:
    """The values of an error-free pickled chunk (fast path), else None."""
    if isinstance(result, signed.ChunkResult) and not result.errors:
        return result.values
    return None


