"""Group commit for one-at-a-time enqueues.

``Client.submit`` in a loop must not pay one Redis round trip per call. Callers append
to a buffer and return; one sender thread writes everything that accumulated while its
previous round trip was in flight as one pipeline. An idle client sends at once (no
timer, no linger), a busy one sends hundreds of tasks per round trip. Items arrive
encoded (the caller's thread made the bytes, so a bad call never fails its neighbours);
an outage of a Redis already used is retried for a while, logged once; so is a failover
(a moved slot, ``READONLY``, ``CLUSTERDOWN`` …: :func:`taskq.broker.cluster.transient`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from taskq.broker.cluster import transient

log = logging.getLogger("taskq.client")

T = TypeVar("T")


class Sender(Generic[T]):
    """Feeds ``write(items)`` from a background thread, in order, retrying outages."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        failed: Callable[[Sequence[T], BaseException], None],
        *,
        retry_for: float = 30.0,
        name: str = "taskq-sender",
    ) -> None:
        self._write, self._failed = write, failed
        self._retry_for = retry_for
        self._name = name
        self._items: list[T] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, item: T) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the client is closed")
            self._items.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif not self._busy:
                self._cond.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far was written (or given up); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: bool(self._items) or self._closed)
                if not self._items:
                    return
                items, self._items = self._items, []
                self._busy = True
            self._send(items)

    def _send(self, items: Sequence[T]) -> None:
        deadline = time.monotonic() + self._retry_for
        backoff = 0.05
        while True:
            try:
                self._write(items)
                return
            except Exception as exc:
                if not transient(exc):  # a bad write: fail it, never retry it
                    self._failed(items, exc)
                    return
                if time.monotonic() + backoff > deadline:
                    self._failed(items, exc)
                    return
                if backoff == 0.05:  # one line per outage, not one per retry
                    log.warning("enqueue failed (%s); retrying for up to %.0f s",
                                exc, self._retry_for)
                time.sleep(backoff)  # the only thing this thread can do: wait out the outage
                backoff = min(backoff * 2, 2.0)
