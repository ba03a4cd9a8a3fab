"""The producer core: :class:`Client` (submit tasks, get ``concurrent.futures.Future``
results back) and :class:`Batch`.

Results arrive by push (see :mod:`taskq.client.replies`); one-by-one submits are
group-committed (:mod:`taskq.client.sender`); enqueueing many tasks is one pipelined
round trip.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from taskq import registry
from taskq.broker import REDIS_DOWN, Broker, connect, unreachable
from taskq.client.replies import Replies
from taskq.client.sender import Sender
from taskq.config import Settings
from taskq.errors import BrokerError, SignatureError, TaskError, task_error
from taskq.message import Outcome, TaskMessage, decode_outcome, sign

log = logging.getLogger("taskq.client")

TaskRef = Callable[..., Any] | str


@dataclass(frozen=True)
class BatchStatus:
    total: int
    done: int
    failed: int

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


class Batch:
    """Many tasks counted together; ``wait()`` blocks until every one has finished."""

    def __init__(self, client: Client, batch_id: str, total: int) -> None:
        self.client, self.id, self.total = client, batch_id, total

    def status(self) -> BatchStatus:
        raw = self.client.broker.batch_status(self.id)
        total = int(raw.get("total", self.total))
        return BatchStatus(total, int(raw.get("done", 0)), int(raw.get("failed", 0)))

    def wait(
        self, timeout: float | None = None, progress: Callable[[BatchStatus], None] | None = None
    ) -> BatchStatus:
        """Block until the batch is complete; ``progress`` is called as counts move."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if progress is not None:
                progress(status)
            if status.complete:
                return status
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"batch {self.id}: {status.finished}/{status.total} finished")
            self.client.broker.wait_batch_event(self.id, left)


class Client:
    """A producer for one queue. Thread-safe; cheap to keep for the life of a program."""

    def __init__(
        self,
        url: str | None = None,
        *,
        queue: str | None = None,
        result_ttl: float | None = None,
        secret: bytes | str | None = None,
        settings: Settings | None = None,
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self.settings = settings or Settings.from_env(
            url=url, queues=(queue,) if queue else None, result_ttl=result_ttl, secret=secret
        )
        self.url = self.settings.url
        self.queue = self.settings.queues[0]
        self.redis = connect(self.url, socket_connect_timeout=5.0, socket_timeout=30.0)
        self.broker = Broker(self.redis, self.queue)
        self.client_id = os.urandom(8).hex()
        self._ids = itertools.count()
        self._replies = Replies(
            self.broker, self.client_id,
            # No hidden client-side retries: the listener must see every lost connection.
            lambda: connect(self.url, retries=False, socket_connect_timeout=5.0, socket_timeout=10.0),
            lambda: self.settings.secret)
        self._closed = False
        self._group_ready = False
        self._sender: Sender[TaskMessage] = Sender(
            self._write, self._write_failed, name=f"taskq-sender-{self.client_id}"
        )
        self._context: Any = None  # taskq.signed.Context, made on first use

    # -- building and sending messages ------------------------------------------------

    def _new_id(self) -> str:
        return f"{self.client_id}-{next(self._ids)}"

    def _message(
        self,
        fn: TaskRef,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        *,
        task_id: str | None = None,
        reply: bool = True,
        keep_result: bool = True,
        batch: str | None = None,
        timeout: float | None = None,
        chunk: bool = False,
    ) -> TaskMessage:
        spec = None if isinstance(fn, str) else registry.find_task(getattr(fn, "__taskq_name__", ""))
        if not isinstance(fn, str) and (spec is None or (self.settings.secret is not None and (
                chunk or not _json_faithful(args, kwargs, chunk)))):
            # Not a registered task, arguments JSON would change, or a map chunk while a
            # secret is at hand (one pickled payload per chunk is ~20x cheaper per item
            # than JSON envelopes): a signed pickle.
            from taskq import signed

            data = [tuple(a) for a in args] if chunk else (tuple(args), kwargs or {})
            return self.pickled_message(fn, signed.STARMAP if chunk else signed.CALL, data,
                                        task_id=task_id, reply=reply, keep_result=keep_result,
                                        batch=batch, timeout=timeout)
        name = registry.name_of(fn)
        spec = registry.find_task(name)
        if spec is not None:
            for call_args in args if chunk else [args]:
                registry.check_call(spec, call_args, kwargs or {})
        return TaskMessage(
            id=task_id or self._new_id(), task=name,
            args=[list(a) for a in args] if chunk else list(args), kwargs=kwargs or {},
            reply_to=self.client_id if reply else None, batch=batch,
            keep_result=keep_result, timeout=timeout, chunk=chunk,
        )

    def pickled_message(
        self, fn: Callable[..., Any], mode: int, data: Any, *, context: Any = None,
        task_id: str | None = None, reply: bool = True, keep_result: bool = True,
        batch: str | None = None, timeout: float | None = None,
    ) -> TaskMessage:
        """A message carrying ``fn`` and ``data`` pickled (see :mod:`taskq.pickled`); it is
        signed when written. Raises if something cannot be pickled or there is no secret."""
        from taskq import signed

        if self.settings.secret is None:
            raise SignatureError(
                f"{signed.label(fn)[8:]} is not a registered task (or its arguments are not "
                "plain JSON): sending it pickled needs the shared secret TASKQ_SECRET, set "
                "here and on the worker nodes"
            )
        if context is None:
            if self._context is None:
                self._context = signed.Context(self.client_id)
            context = self._context
        return TaskMessage(
            id=task_id or self._new_id(), task=signed.label(fn),
            payload=context.payload(fn, mode, data), reply_to=self.client_id if reply else None,
            batch=batch, keep_result=keep_result, timeout=timeout,
        )

    def batch_results(self, batch_id: str, total: int) -> list[Outcome | None]:
        """The stored outcomes of a batch's tasks (``<batch>.<i>``), None where expired."""
        raws = self.broker.stored_results([f"{batch_id}.{i}" for i in range(total)])
        return [decode_outcome(r) if r else None for r in raws]

    def submit_message(self, msg: TaskMessage) -> Future[Any]:
        """Send a built message (group-committed with other submits); its Future."""
        (fut,) = self._track([msg])
        self._sender.put(msg)
        return fut

    def _enqueue(
        self, messages: Sequence[TaskMessage], batch: tuple[str, dict[str, str]] | None = None
    ) -> None:
        """XADD every message in one pipelined round trip (a batch hash first)."""
        try:
            self._write(messages, batch)
        except REDIS_DOWN as exc:
            raise unreachable(self.url, exc) from None

    def _write(
        self, messages: Sequence[TaskMessage], batch: tuple[str, dict[str, str]] | None = None
    ) -> None:
        if not self._group_ready:
            self.broker.ensure_group()
            self._group_ready = True
        secret = self.settings.secret
        envelopes = []
        for msg in messages:
            body = msg.encode()
            signed = msg.payload is not None and secret is not None
            envelopes.append((body, sign(secret, body) if signed and secret else None))
        self.broker.enqueue(envelopes, None if batch is None else (
            batch[0], self.settings.result_ttl, batch[1]))

    def _write_failed(self, messages: Sequence[TaskMessage], exc: BaseException) -> None:
        """The sender gave up on these: their futures fail; a lost send is logged."""
        error = BrokerError(f"cannot enqueue on Redis at {self.url}: {exc}")
        for msg in messages:
            fut = self._replies.forget(msg.id)
            if fut is not None and not fut.done():
                fut.set_exception(error)
            elif fut is None:
                log.error("fire-and-forget task %s was not enqueued: %s", msg.id, exc)

    def _track(self, messages: Sequence[TaskMessage]) -> list[Future[Any]]:
        return self._replies.track([m.id for m in messages])

    def _submit_messages(self, messages: Sequence[TaskMessage],
                         batch: tuple[str, dict[str, str]] | None = None) -> list[Future[Any]]:
        futures = self._track(messages)
        try:
            self._enqueue(messages, batch)
        except BaseException:
            for msg in messages:
                self._replies.forget(msg.id)
            raise
        return futures

    # -- public API -------------------------------------------------------------------

    def submit(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; its result arrives in the Future."""
        return self.apply(fn, args, kwargs)

    def apply(
        self, fn: TaskRef, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> Future[Any]:
        """:meth:`submit` with per-call options (``timeout`` overrides the task's)."""
        msg = self._message(fn, args, kwargs, timeout=timeout)
        (fut,) = self._track([msg])
        self._sender.put(msg)
        return fut

    def submit_many(
        self, fn: TaskRef, arglists: Iterable[Sequence[Any]], *, batch: bool = False,
        reduce: str | None = None,
    ) -> tuple[list[Future[Any]], Batch | None]:
        """Many calls in one round trip. With ``batch``, they are also counted as a
        batch whose results ``taskq result BATCH_ID`` can read later."""
        batch_id = os.urandom(6).hex() if batch else None
        messages = [
            self._message(fn, args, None, batch=batch_id,
                          task_id=f"{batch_id}.{i}" if batch_id else None)
            for i, args in enumerate(arglists)
        ]
        extra = {"reduce": reduce} if reduce else {}
        futures = self._submit_messages(messages, (batch_id, extra) if batch_id else None)
        return futures, Batch(self, batch_id, len(messages)) if batch_id else None

    def send(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> str:
        """Fire-and-forget: no result is stored, its completion is still counted."""
        msg = self._message(fn, args, kwargs, reply=False, keep_result=False)
        self._sender.put(msg)
        return msg.id

    def send_many(self, fn: TaskRef, arglists: Iterable[Sequence[Any]], *,
                  keep_results: bool = False, **extra: str) -> Batch:
        """Fire-and-forget many tasks as one batch: ``wait()`` on it, watch its progress."""
        batch_id = os.urandom(6).hex()
        messages = [
            self._message(fn, args, None, task_id=f"{batch_id}.{i}", reply=False,
                          keep_result=keep_results, batch=batch_id)
            for i, args in enumerate(arglists)
        ]
        self._enqueue(messages, (batch_id, extra))
        return Batch(self, batch_id, len(messages))

    def map(
        self, fn: TaskRef, *iterables: Iterable[Any], chunksize: int = 1,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: every call is sent now, results come back in order."""
        calls = list(zip(*iterables))  # noqa: B905 - stops at the shortest, like map()
        chunks = [calls[i:i + chunksize] for i in range(0, len(calls), max(1, chunksize))]
        messages = [self._message(fn, c, None, chunk=True) for c in chunks]
        futures = self._submit_messages(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        return _chunk_results(futures, deadline)

    def imap(
        self, fn: TaskRef, iterable: Iterable[Any], *, chunksize: int = 1, window: int = 64,
        star: bool = False,
    ) -> Iterator[Any]:
        """Lazy, ordered map over a possibly huge iterable with at most ``window``
        chunks in flight: the input is never all in memory or in Redis."""
        items = iter(iterable)
        in_flight: deque[Future[Any]] = deque()

        def refill() -> None:
            while len(in_flight) < window:
                chunk = list(itertools.islice(items, max(1, chunksize)))
                if not chunk:
                    return
                calls = chunk if star else [(x,) for x in chunk]
                in_flight.append(self._submit_messages([self._message(fn, calls, None, chunk=True)])[0])

        refill()
        while in_flight:
            fut = in_flight[0]
            fut.exception()  # wait for the oldest chunk before replacing it
            in_flight.popleft()
            refill()
            yield from _chunk_results([fut], None)

    def result(self, task_id: str) -> Outcome | None:
        """The stored outcome of a finished task, or None if there is none (yet)."""
        raw = self.broker.result(task_id)
        return decode_outcome(raw) if raw is not None else None

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
        self._replies.close()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_results(futures: Sequence[Future[Any]], deadline: float | None) -> Iterator[Any]:
    for fut in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        items = fut.result(timeout=left)
        if not isinstance(items, list) and not items.errors:  # a pickled ChunkResult
            yield from items.values
            continue
        for ok, value in items:
            if not ok:
                raise value if isinstance(value, BaseException) else task_error(*value)
            yield value


def _json_faithful(args: Sequence[Any], kwargs: dict[str, Any] | None, chunk: bool) -> bool:
    """Would these arguments come back from JSON exactly as they are?"""
    values: list[Any] = [*itertools.chain.from_iterable(args)] if chunk else list(args)
    if kwargs:
        values.extend(kwargs.values())
    while values:
        v = values.pop()
        t = type(v)
        if t is list:
            values.extend(v)
        elif t is dict:
            if not all(type(k) is str for k in v):
                return False
            values.extend(v.values())
        elif t not in (str, int, float, bool) and v is not None:
            return False
    return True


__all__ = ["Batch", "BatchStatus", "Client", "TaskError"]
