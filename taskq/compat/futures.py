"""``taskq.Executor``: a ``concurrent.futures.Executor`` whose processes are worker nodes.

With no URL (argument or ``TASKQ_URL``) it starts a :class:`~taskq.local.LocalCluster`
(an embedded Redis and a local node with ``max_workers`` processes) and stops it on
shutdown, so ``ProcessPoolExecutor`` programs run unchanged anywhere; with a URL the
work goes to the worker nodes serving ``queue``.

``shutdown(cancel_futures=True)`` really stops this Executor's remote work: its queued
tasks never start and its running ones are killed by their nodes (``Client.cancel``);
``Future.cancel()`` keeps its stdlib meaning (the future alone).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures as cf
from concurrent.futures import Future
from typing import Any

import redis

from taskq.client.client import Client
from taskq.client.watchdog import SENT
from taskq.compat.backend import Backend, ChunkSize
from taskq.errors import TaskqError
from taskq.local import lifetime
from taskq.outcome import ChunkResult


class Executor(cf.Executor):
    """``ProcessPoolExecutor`` over taskq: ``submit``, ``map``, ``shutdown``.

    ``url`` may also be given as the first argument's integer ``max_workers`` (so
    ``ProcessPoolExecutor(4)`` ports unchanged). ``max_workers`` is the local node's
    process count (local mode) or a chunk-sizing hint (remote mode). ``queue`` defaults
    to ``TASKQ_QUEUE`` (else ``default``), as for a Client.

    Nothing outside the caller refers to an Executor (the exit hook and the finalizer
    hold its Backend), so one dropped without ``shutdown()`` is collected and shut down:
    pending futures still resolve, then its local cluster stops, as the stdlib's does.
    """

    def __init__(
        self, url: str | int | None = None, *, max_workers: int | None = None,
        queue: str | None = None, initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (), max_tasks_per_child: int | None = None,
        secret: bytes | str | None = None, mp_context: object = None,
    ) -> None:
        if isinstance(url, int):
            url, max_workers = None, url
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._backend = Backend(url, queue=queue, procs=max_workers, secret=secret,
                                initializer=initializer, initargs=initargs,
                                max_tasks=max_tasks_per_child, kind="executor")
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        lifetime.at_exit(lifetime.Phase.FINISH_WORK, self._backend.finish)  # like the stdlib
        self._finalizer = weakref.finalize(self, self._backend.finish_later)
        self._finalizer.atexit = False  # at exit, the lifetime hook above runs in its phase

    @property
    def client(self) -> Client:
        return self._backend.client

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._backend.call(fn, args, kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: ChunkSize = 1) -> Iterator[Any]:
        """Every call is sent now (in chunks of ``chunksize``, or ``"auto"``); results are
        yielded in order. ``timeout`` counts from this call, as in the stdlib."""
        end = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) != 1
        items = list(zip(*iterables)) if star else list(iterables[0])  # noqa: B905
        size = self._backend.chunksize(fn, chunksize, len(items))
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            sent = [f for _, f in self._backend.chunks(fn, items, star, size)]
        return _ordered(sent, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._finalizer.detach()
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            outstanding = self._backend.outstanding()
            cancel_remote(self._backend, [f for f in outstanding if not f.done()])
            for fut in outstanding:
                fut.cancel()
        if wait:
            self._backend.wait_all()
            self._backend.close()
        else:
            threading.Thread(target=self._close_later, name="taskq-executor-shutdown",
                             daemon=True).start()

    def _close_later(self) -> None:
        self._backend.wait_all()
        self._backend.close()


def cancel_remote(backend: Backend, futures: list[Future[Any]]) -> None:
    """Cancel the remote tasks of ``futures`` (queued: never started; running: killed);
    best effort. A local cluster's node is stopped with its backend anyway."""
    if backend.cluster is not None:
        return
    # Newest first: in a FIFO queue those are the least likely to run, and cancelling a
    # running task first would free its process for the next one queued.
    for fut in sorted(futures, key=_queued_at, reverse=True):
        with contextlib.suppress(TaskqError, redis.RedisError):
            backend.client.cancel(fut)


def _queued_at(fut: Future[Any]) -> tuple[int, int]:
    """A future's stream entry id as numbers (not sent yet: the newest of all)."""
    sent = getattr(fut, SENT, None)
    if not sent:
        return (2**63, 0)
    ms, _, seq = sent[0].partition(b"-")
    return (int(ms), int(seq or 0))


def _ordered(sent: list[Future[Any]], end: float | None) -> Iterator[Any]:
    """Values of the chunk Futures in order (each a ChunkResult), raising at the first
    failed item; remaining Futures are cancelled on exit."""
    sent.reverse()
    try:
        while sent:
            left = None if end is None else end - time.monotonic()
            chunk = sent[-1].result(left)
            sent.pop()  # the chunk is now referenced from here only
            for i in range(len(chunk)):
                yield _take(chunk, i)  # no local keeps it: the caller may free it
    finally:
        for fut in sent:
            fut.cancel()


def _take(chunk: ChunkResult, index: int) -> Any:
    """Item ``index`` (or raise its error), no longer held by the chunk: the stdlib's map
    keeps no reference to a result it has yielded."""
    value = chunk.item(index)
    chunk.values[index] = None
    return value
