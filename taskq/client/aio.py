"""``taskq.AsyncClient``: the producer for asyncio programs, on ``redis.asyncio``.

The same settings, envelope, signing and routing as :class:`~taskq.client.client.Client`:
both are a :class:`~taskq.client.producer.Producer` (settings, client id, a call built by
``message`` as :mod:`taskq.client.calls` routes it), encode and sign with
:mod:`taskq.client.encode` (with the caller's trace context), and accept a reply by the
one rule of :mod:`taskq.client.replies` (:func:`~taskq.client.replies.open_reply`). Only
the I/O differs, and it all runs on the event loop, no threads:

- writes are group-committed: the calls made while one pipeline is in flight go
  together in the next, so ``asyncio.gather`` of a thousand submits is a few round trips,
  on one connection. ``await client.submit(...)`` returns once the task is in Redis (an
  outage is raised there, as :class:`~taskq.errors.BrokerError`);
- replies: one listener task per client blocks on the client's inbox (``BLPOP`` on its own
  connection) and resolves ``asyncio.Future`` objects; after a lost connection it reads
  the stored results of the futures still waiting, as the thread of ``Client`` does.

A client belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskq.broker import GROUP, QUEUES_KEY, REDIS_DOWN, QueueKeys, Signed, unreachable
from taskq.client import encode
from taskq.client.calls import DEFAULT, CallOptions, TaskRef
from taskq.client.producer import FIRE_AND_FORGET, Producer, map_chunks
from taskq.client.replies import STOP, each_reply, open_reply, reply_id
from taskq.errors import BrokerError, ConfigError
from taskq.message import TaskMessage, stream_fields
from taskq.outcome import ChunkResult, Outcome, decode_outcome

log = logging.getLogger("taskq.client")


class AsyncClient(Producer):
    """A producer for one queue, for one event loop: ``async with AsyncClient(url) as c``."""

    def _setup(self) -> None:
        """``AsyncClient(url=None, *, queue=None, result_ttl=None, secret=None,
        settings=None)`` (see :class:`Producer`) adds its connection, its future table,
        its pending writes and the tasks that write and listen."""
        self.keys = QueueKeys(self.queue)
        self.redis = _connect(self.url, socket_connect_timeout=5.0, socket_timeout=30.0)
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._group_ready = False
        self._first_use_lock = asyncio.Lock()
        self._pending: list[Signed] = []  # encoded, waiting for the next pipeline
        self._written: asyncio.Future[None] | None = None  # that pipeline's completion
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    # -- encoding (messages are built by Producer.message, as Client's) --------------

    async def _envelopes(self, messages: Sequence[TaskMessage]) -> list[Signed]:
        """The stream bytes of ``messages`` (a bad call raises here, alone), once the
        queue's group exists."""
        if not self._group_ready:
            async with self._first_use_lock:  # a gather of submits creates it once
                if not self._group_ready:
                    await self._first_use()
        return [encode.envelope(m, self.settings, self.queue, self.message_ttl)
                for m in messages]

    async def _first_use(self) -> None:
        """Create the stream's group (from id 0, as ``Broker.ensure_group``): a Redis that
        cannot be reached or refuses writes is one prompt error at the first call."""
        try:
            try:
                await self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            await self.redis.sadd(QUEUES_KEY, self.queue)
        except REDIS_DOWN as exc:
            raise unreachable(self.url, exc) from None
        except redis.ResponseError as exc:  # NOPERM, READONLY
            raise BrokerError(f"Redis refuses taskq's writes: {exc}") from None
        self._group_ready = True

    # -- public API -------------------------------------------------------------------

    async def submit(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker: once it is queued, the Future that
        ``await`` gives its result of (or raises its error, as with ``Client``)."""
        return await self.apply(fn, args, kwargs)

    async def apply(
        self, fn: TaskRef, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
        time_limit: float | None = None,
    ) -> asyncio.Future[Any]:
        """:meth:`submit` with per-call options, as ``Client.apply``."""
        options = DEFAULT if time_limit is None else CallOptions(time_limit=time_limit)
        (fut,) = await self._submit([self.message(fn, args, kwargs, options=options)])
        return fut

    async def send(self, fn: TaskRef, /, *args: Any, **kwargs: Any) -> str:
        """Fire-and-forget: no result is stored, its completion is still counted. The
        task id, once it is queued."""
        msg = self.message(fn, args, kwargs, options=FIRE_AND_FORGET)
        await self._write(await self._envelopes([msg]))
        return msg.id

    async def map(self, fn: TaskRef, *iterables: Iterable[Any],
                  chunksize: int = 1) -> AsyncIterator[Any]:
        """``async for value in client.map(fn, xs)``: every call is sent when iteration
        starts (one pipeline), values come back in order; the first failed call raises."""
        chunks = map_chunks(iterables, chunksize)
        futures = await self._submit([self.message(fn, c, chunk=True) for c in chunks])
        for fut in futures:
            result: ChunkResult = await fut
            for value in result:
                yield value

    async def result(self, task_id: str) -> Outcome | None:
        """The stored outcome of a finished task, or None if there is none (yet)."""
        raw: Any = await self.redis.get(self.keys.result(task_id))
        return decode_outcome(raw, self.settings.secret) if raw is not None else None

    async def close(self) -> None:
        """Write what is pending, stop the listener; pending futures stay as they are."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):  # its callers were told
                await self._writer
        listener = self._listener
        if listener is not None:
            # Woken by a token in its inbox, it sees it should stop (as Client's thread):
            # a task cancelled inside redis-py's BLPOP may not stop at once.
            with contextlib.suppress(redis.RedisError):
                await self.redis.lpush(self.keys.inbox(self.client_id), STOP)
            await asyncio.wait({listener}, timeout=5.0)
            if not listener.done():
                listener.cancel()
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing ----------------------------------------------------------------------

    async def _submit(self, messages: Sequence[TaskMessage]) -> list[asyncio.Future[Any]]:
        encoded = await self._envelopes(messages)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in messages]
        for msg, fut in zip(messages, futures, strict=True):
            self._futures[msg.id] = fut
        if self._listener is None:
            self._listener = loop.create_task(self._listen(), name=f"taskq-replies-{self.client_id}")
        try:
            await self._write(encoded)
        except BaseException:
            for msg in messages:
                self._futures.pop(msg.id, None)
            raise
        return futures

    async def _write(self, envelopes: list[Signed]) -> None:
        """Queue ``envelopes`` for the next pipeline and wait until it is written."""
        if self._closed:
            raise RuntimeError("the client is closed")
        if not envelopes:
            return  # (an empty map): no pipeline would ever resolve its wait
        self._pending.extend(envelopes)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        written = self._written
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a caller that gives up does not cancel the write of its neighbours.
        await asyncio.shield(written)

    async def _drain(self) -> None:
        """Write pipelines until nothing is pending: what arrives during one write goes
        in the next (group commit)."""
        while self._pending:
            envelopes, self._pending = self._pending, []
            written, self._written = self._written, None
            assert written is not None
            try:
                await self._xadd(envelopes)
            except REDIS_DOWN as exc:
                written.set_exception(unreachable(self.url, exc))
            except Exception as exc:
                written.set_exception(exc)
            else:
                written.set_result(None)

    async def _xadd(self, envelopes: Sequence[Signed]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for body, signature in envelopes:
            pipe.xadd(self.keys.stream, stream_fields(body, signature))  # type: ignore[arg-type]
        pipe.hincrby(self.keys.stats, "enqueued", len(envelopes))
        await pipe.execute()

    # -- replies ----------------------------------------------------------------------

    async def _listen(self) -> None:
        # No hidden client-side retries: the listener must see every lost connection.
        conn = _connect(self.url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5.0,
                        socket_timeout=10.0)
        inbox = self.keys.inbox(self.client_id)
        backoff, missed = 0.1, False
        try:
            while not self._closed:
                try:
                    if missed:
                        await self._read_stored(conn)
                        missed = False
                    item: Any = await conn.blpop([inbox], timeout=2)
                    blobs: list[bytes] = [item[1]] if item else []
                    while blobs:  # resolve the first reply before draining more
                        for blob in blobs:
                            if blob != STOP:
                                self._resolve(blob)
                        more: Any = await conn.lpop(inbox, 1000)
                        blobs = list(more or ())
                    backoff = 0.1
                except REDIS_DOWN as exc:
                    if self._closed:
                        break
                    log.warning("reply listener lost Redis (%s); retrying in %.1f s", exc, backoff)
                    missed = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
        finally:
            await conn.aclose()

    async def _read_stored(self, conn: aioredis.Redis) -> None:
        """Replies popped just before a lost connection are gone; stored results are not."""
        waiting = list(self._futures)
        for i in range(0, len(waiting), 1000):
            part = waiting[i:i + 1000]
            raws: Any = await conn.mget([self.keys.result(t) for t in part])
            for raw in raws:
                if raw is not None:
                    self._resolve(raw)

    def _resolve(self, blob: bytes) -> None:
        """Resolve the futures of one inbox element, by the rule of
        :func:`taskq.client.replies.each_reply` (progress lines are dropped)."""
        each_reply(blob, self._resolve_one)

    def _resolve_one(self, obj: Any) -> None:
        task_id = reply_id(obj)
        if task_id is None:
            return
        fut = self._futures.get(task_id)
        if fut is None or fut.done():
            self._futures.pop(task_id, None)
            return  # a duplicate outcome, or cancelled by its caller
        opened = open_reply(obj, task_id, self.settings.secret)
        if opened is None:
            return
        ok, value = opened
        del self._futures[task_id]
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _connect(url: str, **kwargs: Any) -> aioredis.Redis:
    try:
        return aioredis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL for AsyncClient: {exc}") from None


__all__ = ["AsyncClient"]
