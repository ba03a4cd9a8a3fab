"""The producer core: :class:`Client` (submit tasks, get ``concurrent.futures.Future``
results back; its settings and message building are :class:`~taskq.client.producer.Producer`'s,
the :class:`~taskq.client.batch.Batch` it returns lives in :mod:`taskq.client.batch`).

How a call travels (by name or pickled) and what its options mean is decided in
:mod:`taskq.client.calls`; results arrive by push (see :mod:`taskq.client.replies`), a
chunk's as one :class:`~taskq.message.ChunkResult`; one-by-one submits are
group-committed (:mod:`taskq.client.sender`); enqueueing many tasks is one pipelined
round trip.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import orjson
import redis

from taskq.broker import REDIS_DOWN, Broker, connect, unreachable
from taskq.broker.control import read_progress
from taskq.broker.queue import Signed
from taskq.client import cancel as cancels
from taskq.client import scheduled, tracing
from taskq.client.batch import Batch, BatchStatus
from taskq.client.calls import DEFAULT, CallOptions, TaskRef
from taskq.client.encode import Calls, envelope
from taskq.client.producer import FIRE_AND_FORGET, Producer, check_positive, map_chunks
from taskq.client.replies import OnProgress, Progress, Replies
from taskq.client.sender import Sender
from taskq.client.watchdog import Watchdog, mark_sent
from taskq.config import redact_url
from taskq.errors import BrokerError, TaskError
from taskq.message import TaskMessage
from taskq.outcome import ChunkResult, Outcome, decode_outcome

log = logging.getLogger("taskq.client")

Envelope = tuple[str, "Future[Any] | None", bytes, "bytes | None"]
"""What the sender writes: task id, its Future (None: fire-and-forget), body, signature."""


class Client(Producer):
    """A producer for one queue. Thread-safe; cheap to keep for the life of a program."""

    # Client(url=None, *, queue=None, result_ttl=None, secret=None, settings=None): see
    # Producer; this is what a Client adds to it.
    def _setup(self) -> None:
        self.redis = connect(self.url, socket_connect_timeout=5.0, socket_timeout=30.0)
        self.broker = Broker(self.redis, self.queue, wait_replicas=self.settings.wait_replicas)
        self._replies = Replies(
            self.broker, self.client_id,
            # No hidden client-side retries: the listener must see every lost connection.
            lambda: connect(self.url, retries=False, socket_connect_timeout=5.0, socket_timeout=10.0),
            lambda: self.settings.secret)
        self._closed = False
        self._group_ready = False
        self._plain: dict[str, Calls] = {}  # submit's encoders, by task name
        self._sender: Sender[Envelope] = Sender(
            self._write, self._write_failed, name=f"taskq-sender-{self.client_id}"
        )
        self._watchdog = Watchdog(self.broker, self.settings.lease,
                                  self._replies.waiting_futures, self._replies.resolve,
                                  self._replies.forget)

    # -- sending messages (built by Producer.message) ---------------------------------

    def batch_results(self, batch_id: str, total: int) -> list[Outcome | None]:
        """The stored outcomes of a batch's tasks (``<batch>.<i>``), None where expired."""
        raws = self.broker.stored_results([f"{batch_id}.{i}" for i in range(total)])
        return [decode_outcome(r, self.settings.secret) if r else None for r in raws]

    def submit_message(self, msg: TaskMessage) -> Future[Any]:
        """Send a built message (group-committed with other submits); its Future."""
        body, signature = self._envelope(msg)  # a bad call fails here, alone
        (fut,) = self._replies.track([msg.id])
        self._sender.put((msg.id, fut, body, signature))
        return fut

    def _calls(self, fn: TaskRef, options: CallOptions, *, chunk: bool = False,
               star: bool = True) -> Calls:
        """The encoder of many calls of ``fn`` with ``options`` (:class:`Calls`)."""
        if not self._group_ready:
            self._first_use()
        return Calls(self, fn, options, chunk=chunk, star=star)

    def _envelope(self, msg: TaskMessage) -> Signed:
        """The bytes that go on the stream, encoded in the caller's thread: a value JSON
        cannot carry, or a message over the size limit, raises at the call that made it
        (TypeError naming the argument, ValueError with the limit), never fails the
        calls group-committed with it. The sender thread then only writes bytes. One
        encoder for every producer (:mod:`taskq.client.encode`, AsyncClient's too)."""
        if not self._group_ready:
            self._first_use()
        return envelope(msg, self.settings, self.queue, self.message_ttl)

    def _first_use(self) -> None:
        """Create the stream's group once, in the caller's thread: a Redis that cannot be
        reached, or refuses our writes (a read-only user, a replica), is one prompt error
        at the first call, not retries and thread tracebacks."""
        try:
            self.broker.ensure_group()
        except REDIS_DOWN as exc:
            raise unreachable(self.url, exc) from None
        except redis.ResponseError as exc:  # NOPERM, READONLY
            raise BrokerError(f"Redis at {redact_url(self.url)} refuses taskq's writes: "
                              f"{exc}") from None
        self._group_ready = True

    def _enqueue(
        self, envelopes: Sequence[Envelope], batch: tuple[str, dict[str, str]] | None = None
    ) -> None:
        """XADD every envelope in one pipelined round trip (a batch hash first)."""
        try:
            self._write(envelopes, batch)
        except REDIS_DOWN as exc:
            raise unreachable(self.url, exc) from None

    def _write(
        self, envelopes: Sequence[Envelope], batch: tuple[str, dict[str, str]] | None = None
    ) -> None:
        entry_ids = self.broker.enqueue([(e[2], e[3]) for e in envelopes], None if batch is None
                                        else (batch[0], self.settings.result_ttl, batch[1]))
        now = time.monotonic()
        for (_, fut, _, _), entry_id in zip(envelopes, entry_ids, strict=True):
            if fut is not None:
                mark_sent(fut, entry_id, now)  # where the lost-task watchdog looks for it
        self._watchdog.start()

    def _write_failed(self, envelopes: Sequence[Envelope], exc: BaseException) -> None:
        """The sender gave up on these: their futures fail; a lost send is logged."""
        error = BrokerError(f"cannot enqueue on Redis at {redact_url(self.url)}: {exc}")
        for task_id, fut, _, _ in envelopes:
            if fut is None:
                log.error("fire-and-forget task %s was not enqueued: %s", task_id, exc)
            elif self._replies.forget(task_id) is fut and not fut.done():
                fut.set_exception(error)

    def _submit_messages(self, messages: Sequence[TaskMessage],
                         batch: tuple[str, dict[str, str]] | None = None) -> list[Future[Any]]:
        return self._submit_encoded([m.id for m in messages],
                                    [self._envelope(m) for m in messages], batch)

    def _submit_encoded(self, task_ids: Sequence[str], encoded: Sequence[Signed],
                        batch: tuple[str, dict[str, str]] | None = None) -> list[Future[Any]]:
        """Enqueue encoded envelopes now, in one round trip; their Futures."""
        futures = self._replies.track(task_ids)
        try:
            self._enqueue([(t, f, *e) for t, f, e in zip(task_ids, futures, encoded,
                                                         strict=True)], batch)
        except BaseException:
            for task_id in task_ids:
                self._replies.forget(task_id)
            raise
        return futures

    # -- public API -------------------------------------------------------------------

    def submit(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; its result arrives in the Future."""
        return self.apply(fn, args, kwargs)

    def apply(
        self, fn: TaskRef, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
        time_limit: float | None = None, timeout: float | None = None,
        delay: float | None = None, eta: datetime | None = None,
        dedup_key: str | None = None, dedup_ttl: float | None = None,
        on_progress: OnProgress | None = None,
    ) -> Future[Any]:
        """:meth:`submit` with per-call options: ``time_limit`` (seconds) overrides the
        task's own, however the call travels; ``timeout`` is its older alias.

        ``delay`` (seconds) or ``eta`` (a datetime, naive = UTC) start it no earlier
        than that; with ``dedup_key``, while a task with that key is queued or running
        (or for ``dedup_ttl`` seconds after), the call returns a future for that task
        instead of queueing another (:mod:`taskq.client.scheduled`).

        ``on_progress`` is called (in the reply listener's thread) with each
        :class:`Progress` the task reports with ``taskq.progress``, at most about once a
        second, until its result arrives."""
        if on_progress is not None:
            fut = self.apply(fn, args, kwargs, time_limit=time_limit, timeout=timeout,
                             delay=delay, eta=eta, dedup_key=dedup_key, dedup_ttl=dedup_ttl)
            self._replies.watch_progress(fut.task_id, on_progress)  # type: ignore[attr-defined]
            return fut
        if timeout is not None:
            if time_limit is not None:
                raise TypeError("apply() takes time_limit or its alias timeout, not both")
            time_limit = timeout
        if delay is not None or eta is not None or dedup_key is not None or dedup_ttl is not None:
            return scheduled.apply(self, fn, args, kwargs, CallOptions(
                time_limit=time_limit, delay=delay, eta=eta, dedup_key=dedup_key,
                dedup_ttl=dedup_ttl))
        if time_limit is None and not kwargs and tracing.trace_context() is None:
            return self._submit_plain(fn, args)
        options = DEFAULT if time_limit is None else CallOptions(time_limit=time_limit)
        return self.submit_message(self.message(fn, args, kwargs, options=options))

    def _submit_plain(self, fn: TaskRef, args: Sequence[Any]) -> Future[Any]:
        """The hot path of ``submit`` (positional arguments, no options, no active span):
        the envelope comes from an encoder kept per task (:class:`Calls`), not from a
        message built and encoded whole."""
        name = fn if isinstance(fn, str) else getattr(fn, "__taskq_name__", None)
        if not isinstance(name, str):  # an unregistered callable travels pickled anyway
            return self.submit_message(self.message(fn, args))
        calls = self._plain.get(name)
        if calls is None or calls.fn != fn:
            if len(self._plain) >= 64:
                self._plain.clear()
            calls = self._plain[name] = self._calls(fn, DEFAULT)
        task_id = self.new_id()
        body, signature = calls.envelope(task_id, args)  # a bad call fails here, alone
        (fut,) = self._replies.track([task_id])
        self._sender.put((task_id, fut, body, signature))
        return fut

    def submit_many(
        self, fn: TaskRef, arglists: Iterable[Sequence[Any]], *, batch: bool = False,
        reduce: str | None = None, delay: float | None = None,
    ) -> tuple[list[Future[Any]], Batch | None]:
        """Many calls in one round trip. With ``batch``, they are also counted as a
        batch whose results ``taskq result BATCH_ID`` can read later; with ``delay``
        (seconds), none starts before then."""
        if delay is not None:
            return scheduled.submit_many(self, fn, arglists, batch, reduce, delay)
        batch_id = os.urandom(6).hex() if batch else None
        encoder = self._calls(fn, CallOptions(batch=batch_id))
        task_ids, encoded = [], []
        for i, args in enumerate(arglists):
            task_id = f"{batch_id}.{i}" if batch_id else self.new_id()
            task_ids.append(task_id)
            encoded.append(encoder.envelope(task_id, args))
        extra = {"reduce": reduce} if reduce else {}
        futures = self._submit_encoded(task_ids, encoded, (batch_id, extra) if batch_id else None)
        return futures, Batch(self, batch_id, len(task_ids)) if batch_id else None

    def send(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> str:
        """Fire-and-forget: no result is stored, its completion is still counted."""
        msg = self.message(fn, args, kwargs, options=FIRE_AND_FORGET)
        self._sender.put((msg.id, None, *self._envelope(msg)))
        return msg.id

    def send_many(self, fn: TaskRef, arglists: Iterable[Sequence[Any]], *,
                  keep_results: bool = False, **extra: str) -> Batch:
        """Fire-and-forget many tasks as one batch: ``wait()`` on it, watch its progress."""
        batch_id = os.urandom(6).hex()
        encoder = self._calls(fn, CallOptions(reply=False, keep_result=keep_results,
                                              batch=batch_id))
        envelopes: list[Envelope] = []
        for i, args in enumerate(arglists):
            task_id = f"{batch_id}.{i}"
            body, signature = encoder.envelope(task_id, args)
            envelopes.append((task_id, None, body, signature))
        self._enqueue(envelopes, (batch_id, extra))
        return Batch(self, batch_id, len(envelopes))

    def map(
        self, fn: TaskRef, *iterables: Iterable[Any], chunksize: int = 1,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: every call is sent now, results come back in order.
        ``timeout`` bounds the wait for them (seconds from this call), not the tasks: a
        task's own time limit is :meth:`apply`'s ``time_limit`` or its ``@task(timeout=)``."""
        chunks = map_chunks(iterables, chunksize)
        encoder = self._calls(fn, DEFAULT, chunk=True)
        task_ids = [self.new_id() for _ in chunks]
        futures = self._submit_encoded(task_ids, [encoder.envelope(t, c) for t, c in
                                                  zip(task_ids, chunks, strict=True)])
        deadline = None if timeout is None else time.monotonic() + timeout
        return _chunk_results(futures, deadline)

    def imap(
        self, fn: TaskRef, iterable: Iterable[Any], *, chunksize: int = 1, window: int = 64,
        star: bool = False,
    ) -> Iterator[Any]:
        """Lazy, ordered map over a possibly huge iterable with at most ``window``
        chunks in flight: the input is never all in memory or in Redis. A bad
        ``chunksize`` or ``window`` raises ValueError here, not at the first ``next()``."""
        check_positive("chunksize", chunksize)
        check_positive("window", window)
        return self._imap(fn, iter(iterable), chunksize, window, star)

    def _imap(self, fn: TaskRef, items: Iterator[Any], chunksize: int, window: int,
              star: bool) -> Iterator[Any]:
        in_flight: deque[Future[Any]] = deque()

        def refill() -> None:
            while len(in_flight) < window:
                part = list(itertools.islice(items, chunksize))
                if not part:
                    return
                msg = self.message(fn, part, chunk=True, star=star)
                in_flight.append(self._submit_messages([msg])[0])

        refill()
        while in_flight:
            fut = in_flight[0]
            fut.exception()  # wait for the oldest chunk before replacing it
            in_flight.popleft()
            refill()
            yield from _chunk_results([fut], None)

    def cancel(self, task: Future[Any] | str) -> bool:
        """Cancel a task, by its Future or its id (see :mod:`taskq.client.cancel`): a
        queued one never starts, a running one's process is killed by its node; either
        way its outcome is ``cancelled`` and its Future raises
        ``concurrent.futures.CancelledError``. True if it was queued or running, False
        if it had finished (or is unknown)."""
        return cancels.cancel(self, task)

    def cancel_batch(self, batch_id: str) -> int:
        """Cancel every task of a batch still queued or running; how many."""
        return cancels.cancel_batch(self, batch_id)

    def progress(self, task: Future[Any] | str) -> Progress | None:
        """The last progress a running task reported (``taskq.progress``), or None."""
        task_id = task if isinstance(task, str) else task.task_id  # type: ignore[attr-defined]
        raw = read_progress(self.redis, self.broker.keys, task_id)
        return None if raw is None else Progress.from_json(orjson.loads(raw))

    def result(self, task_id: str) -> Outcome | None:
        """The stored outcome of a finished task, or None if there is none (yet)."""
        raw = self.broker.result(task_id)
        return decode_outcome(raw, self.settings.secret) if raw is not None else None

    def batch(self, batch_id: str) -> Batch:
        status = self.broker.batch_status(batch_id)
        return Batch(self, batch_id, int(status.get("total", 0)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submit/send so far has reached Redis (False on timeout)."""
        return self._sender.flush(timeout)

    def close(self) -> None:
        """Send what is buffered, stop the listener; pending futures stay as they are."""
        if self._closed:
            return
        self._closed = True
        self._sender.close()
        self._watchdog.close()
        self._replies.close()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_results(futures: Sequence[Future[Any]], deadline: float | None) -> Iterator[Any]:
    """The values of chunk Futures in order, raising at the first failed item."""
    for fut in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        result: ChunkResult = fut.result(timeout=left)
        yield from result


__all__ = ["Batch", "BatchStatus", "Client", "TaskError"]
