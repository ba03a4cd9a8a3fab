"""``taskq.Pool``: the ``multiprocessing.Pool`` interface over taskq worker nodes.

Same methods, ordering, exceptions and timeouts as the stdlib (``get(timeout)`` raises
``multiprocessing.TimeoutError``; a task's own exception is re-raised with the remote
traceback as its ``__cause__``), plus: ``imap``/``imap_unordered`` read their input lazily
with a bounded number of chunks in flight, and ``chunksize="auto"`` sizes chunks from
measured task times. Callbacks run in the client's reply thread: keep them short.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import queue as queue_mod
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures as cf
from concurrent.futures import Future
from typing import Any

from taskq.compat.backend import Backend, ChunkSize
from taskq.compat.futures import cancel_remote
from taskq.errors import TaskqError
from taskq.outcome import ChunkResult

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
Callback = Callable[[Any], object] | None


class AsyncResult:
    """The result of ``apply_async``/``map_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, callback: Callback = None, error_callback: Callback = None) -> None:
        self._event = threading.Event()
        self._callback, self._error_callback = callback, error_callback
        self._success = False
        self._value: Any = None
        self._set_lock = threading.Lock()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        with self._set_lock:
            if self._event.is_set():
                return
            self._success, self._value = ok, value
        callback = self._callback if ok else self._error_callback
        try:
            if callback is not None:
                callback(value)
        finally:
            self._event.set()

    def _from_future(self, fut: Future[Any]) -> None:
        if fut.cancelled():
            self._set(False, TaskqError("the task was cancelled"))
        elif fut.exception() is not None:
            self._set(False, fut.exception())
        else:
            self._set(True, fut.result())


ApplyResult = AsyncResult


class MapResult(AsyncResult):
    """Chunks fill a pre-sized list; the first failure (or the last chunk) settles it."""

    def __init__(self, n: int, callback: Callback, error_callback: Callback) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * n
        self._left = n
        self._lock = threading.Lock()
        if n == 0:
            self._set(True, [])

    def _add(self, start: int, fut: Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._set(False, fut.exception() or TaskqError("a chunk was cancelled"))
            return
        result: ChunkResult = fut.result()
        error = result.first_error()
        if error is not None:
            self._set(False, error)
            return
        values = result.values
        with self._lock:
            self._values[start:start + len(values)] = values
            self._left -= len(values)
            done = self._left == 0
        if done:
            self._set(True, self._values)


class IMapIterator:
    """Results of ``imap`` (in order) or ``imap_unordered`` (as chunks finish).

    The input is read as chunks are sent, at most ``window`` chunks ahead of what has
    been consumed; the first window is sent at the call, the rest as you iterate.
    """

    def __init__(self, backend: Backend, fn: Callable[..., Any], iterable: Iterable[Any],
                 chunksize: ChunkSize, star: bool, ordered: bool, window: int | None) -> None:
        self._backend, self._fn, self._star, self._ordered = backend, fn, star, ordered
        self._items = iter(iterable)
        self._chunksize = chunksize
        self._window = window or max(4, 2 * backend.procs)
        self._in_flight: deque[Future[Any]] = deque()
        self._done: queue_mod.SimpleQueue[Future[Any]] = queue_mod.SimpleQueue()
        self._current: ChunkResult | None = None  # the chunk being read, and where
        self._index = 0
        self._input_error: BaseException | None = None
        self._exhausted = False
        self._lock = threading.Lock()
        self._refill()

    def _refill(self) -> None:
        while not self._exhausted and len(self._in_flight) < self._window:
            size = self._backend.chunksize(self._fn, self._chunksize, None)
            try:
                chunk = list(itertools.islice(self._items, size))
            except Exception as exc:  # the input itself failed: raised after what was sent
                self._input_error, self._exhausted = exc, True
                return
            if not chunk:
                self._exhausted = True
                return
            for _, fut in self._backend.chunks(self._fn, chunk, self._star, len(chunk)):
                self._in_flight.append(fut)
                if not self._ordered:
                    fut.add_done_callback(self._done.put)

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        with self._lock:
            while True:
                current, i = self._current, self._index
                if current is not None and i < len(current):
                    self._index = i + 1
                    return current.item(i)  # a failed item raises; the next one goes on
                fut = self._next_chunk(timeout)
                self._current, self._index = None, 0
                self._current = fut.result()  # raises if the whole chunk failed

    __next__ = next

    def _next_chunk(self, timeout: float | None) -> Future[Any]:
        if not self._in_flight:
            self._refill()
            if not self._in_flight:
                if self._input_error is not None:
                    error, self._input_error = self._input_error, None
                    raise error
                raise StopIteration
        if self._ordered:
            fut = self._in_flight[0]
            if not fut.done() and not _wait(fut, timeout):
                raise multiprocessing.TimeoutError
            self._in_flight.popleft()
        else:
            try:
                fut = self._done.get(timeout=timeout)
            except queue_mod.Empty:
                raise multiprocessing.TimeoutError from None
            self._in_flight.remove(fut)
        self._refill()
        return fut


def _wait(fut: Future[Any], timeout: float | None) -> bool:
    try:
        fut.exception(timeout)
    except cf.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        return False
    except BaseException:  # cancelled
        pass
    return True


class Pool:
    """``multiprocessing.Pool`` over taskq. With no ``url`` (nor ``TASKQ_URL``) it runs a
    local node with ``processes`` processes; with one, the queue's worker nodes do the
    work (on ``queue``, by default ``TASKQ_QUEUE`` or ``default``, as for a Client).
    ``initializer(*initargs)`` runs once per process that runs this Pool's tasks."""

    def __init__(
        self, processes: int | None = None, initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (), maxtasksperchild: int | None = None, context: object = None,
        *, url: str | None = None, queue: str | None = None, secret: bytes | str | None = None,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int)
                                             or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._state = _TERMINATE
        self._backend = Backend(url, queue=queue, procs=processes, secret=secret,
                                initializer=initializer, initargs=initargs,
                                max_tasks=maxtasksperchild, kind="pool")
        self._iterators: weakref.WeakSet[IMapIterator] = weakref.WeakSet()
        self._state = _RUN

    @property
    def client(self) -> Any:
        return self._backend.client

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    # -- one call -------------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: Sequence[Any] = (),
              kwds: dict[str, Any] | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Sequence[Any] = (),
                    kwds: dict[str, Any] | None = None, callback: Callback = None,
                    error_callback: Callback = None) -> AsyncResult:
        self._check_running()
        result = AsyncResult(callback, error_callback)
        self._backend.call(func, tuple(args), dict(kwds or {})).add_done_callback(result._from_future)
        return result

    # -- many calls -----------------------------------------------------------------------

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: ChunkSize = None) -> list[Any]:
        return self._map_async(func, iterable, chunksize, False, None, None).get()  # type: ignore[no-any-return]

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Sequence[Any]],
                chunksize: ChunkSize = None) -> list[Any]:
        return self._map_async(func, iterable, chunksize, True, None, None).get()  # type: ignore[no-any-return]

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: ChunkSize = None,
                  callback: Callback = None, error_callback: Callback = None) -> MapResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Sequence[Any]],
                      chunksize: ChunkSize = None, callback: Callback = None,
                      error_callback: Callback = None) -> MapResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: ChunkSize,
                   star: bool, callback: Callback, error_callback: Callback) -> MapResult:
        self._check_running()
        items = [tuple(a) for a in iterable] if star else list(iterable)
        size = self._backend.chunksize(func, chunksize, len(items))
        result = MapResult(len(items), callback, error_callback)
        start = 0
        for n, fut in self._backend.chunks(func, items, star, size):
            fut.add_done_callback(functools.partial(result._add, start))
            start += n
        return result

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: ChunkSize = 1, *,
             window: int | None = None) -> IMapIterator:
        return self._imap(func, iterable, chunksize, True, window)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: ChunkSize = 1, *, window: int | None = None) -> IMapIterator:
        return self._imap(func, iterable, chunksize, False, window)

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: ChunkSize,
              ordered: bool, window: int | None) -> IMapIterator:
        self._check_running()
        it = IMapIterator(self._backend, func, iterable, chunksize, False, ordered, window)
        self._iterators.add(it)
        return it

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """No more tasks; ``join()`` then waits for the outstanding ones."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self) -> None:
        """Stop now: outstanding results fail; a local node is killed, remote tasks are
        cancelled (queued ones never start, running ones are killed by their nodes)."""
        self._state = _TERMINATE
        outstanding = [f for f in self._backend.outstanding() if not f.done()]
        self._backend.fail_all(TaskqError("the pool was terminated"))
        cancel_remote(self._backend, outstanding)
        self._backend.close(kill=True)

    def join(self) -> None:
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._backend.wait_all()
        if self._state == _TERMINATE or not any(not it.exhausted for it in self._iterators):
            self._backend.close()  # else an imap still has input to send: close() on GC/exit

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) == _RUN:  # the stdlib's warning, word for word
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
        backend = getattr(self, "_backend", None)
        if backend is not None and not backend.closed:
            backend.close(kill=True)

    def __repr__(self) -> str:
        return f"<taskq.Pool state={self._state} procs={self._backend.procs}>"
