"""The reply listener and its future table.

Every client has a reply inbox (a Redis list) that the completion script pushes outcomes
to; one listener thread per client blocks on it and resolves futures, so results arrive
by push, never by polling. Every chunk's future resolves with one
:class:`~taskq.message.ChunkResult`, decoded here whichever way the chunk travelled.
After a lost connection or a failover (never fatal to the thread) it reads the stored
results of the futures still waiting (replies popped just before a drop are gone; stored
ones are not).

Trust: a client with a secret signs every task it sends (:meth:`Client._write`), so it
takes for each of its futures only a reply signed for that task id (``os``, or ``xs`` for
a pickled result); anything else, and any malformed reply, is logged and skipped, and
the future keeps waiting for the genuine one. Nothing a payload does while its result is
loaded (``SystemExit`` included) stops the listener. That rule is written once, in
:func:`each_reply`, :func:`reply_id` and :func:`open_reply`, which the asyncio client's
listener (:mod:`taskq.client.aio`) uses too.

A cancelled outcome (:func:`taskq.broker.control.is_cancelled`) cancels the future, so
it raises ``concurrent.futures.CancelledError``. A ``{"progress": {...}}`` line in the
inbox is a running task's progress (never an outcome): it goes to the task's
``on_progress`` callback, if it has one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from taskq.broker import REDIS_DOWN, Broker
from taskq.broker.cluster import refresh, transient
from taskq.broker.control import is_cancelled
from taskq.outcome import decode_outcome
from taskq.signing import outcome_verifies

log = logging.getLogger("taskq.client")

STOP = b"stop"
"""Pushed into the inbox by close(): wakes the listener so it can see it should stop."""
_WAITED = 0.0005
"""A blocking pop that took longer than this (s) waited for its reply: no backlog."""


@dataclass(frozen=True)
class Progress:
    """A running task's last progress: ``done`` of ``total`` (None: unknown), the
    ``info`` it gave, and ``at`` (wall-clock seconds when the task reported it)."""

    done: float
    total: float | None
    info: dict[str, Any]
    at: float

    @classmethod
    def from_json(cls, obj: Any) -> Progress:
        """ValueError if ``obj`` is not a progress object."""
        if not isinstance(obj, dict):
            raise ValueError("progress must be an object")
        done, total, info, at = obj.get("done"), obj.get("total"), obj.get("info"), obj.get("at")
        if not isinstance(done, (int, float)) or not isinstance(at, (int, float)):
            raise ValueError("progress needs numbers done and at")
        if total is not None and not isinstance(total, (int, float)):
            raise ValueError("progress total must be a number")
        return cls(done, total, info if isinstance(info, dict) else {}, float(at))


OnProgress = Callable[[Progress], object]


class Replies:
    """The futures a client waits for, and the thread that resolves them."""

    def __init__(self, broker: Broker, client_id: str, connect: Callable[[], redis.Redis],
                 secret: Callable[[], bytes | None]) -> None:
        self._broker, self._client_id = broker, client_id
        self._connect, self._secret = connect, secret
        self._futures: dict[str, Future[Any]] = {}
        self._on_progress: dict[str, OnProgress] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # -- the future table ---------------------------------------------------------------

    def track(self, task_ids: Sequence[str]) -> list[Future[Any]]:
        """A new Future for each task id, resolved when its reply arrives."""
        futures: list[Future[Any]] = []
        with self._lock:
            for task_id in task_ids:
                fut: Future[Any] = Future()
                fut.task_id = task_id  # type: ignore[attr-defined]
                self._futures[task_id] = fut
                futures.append(fut)
        self._ensure_thread()
        return futures

    def forget(self, task_id: str) -> Future[Any] | None:
        """Stop waiting for ``task_id``; its Future (None if there was none)."""
        with self._lock:
            if self._on_progress:
                self._on_progress.pop(task_id, None)
            return self._futures.pop(task_id, None)

    def watch_progress(self, task_id: str, callback: OnProgress) -> None:
        """Call ``callback`` (in the listener thread) with each progress of ``task_id``."""
        with self._lock:
            self._on_progress[task_id] = callback

    def waiting(self) -> list[str]:
        with self._lock:
            return list(self._futures)

    def waiting_futures(self) -> list[Future[Any]]:
        """The futures still waiting (for the lost-task watchdog, client/watchdog.py)."""
        with self._lock:
            return list(self._futures.values())

    # -- the thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._listen, name=f"taskq-replies-{self._client_id}", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        """Stop the listener; pending futures stay as they are."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            with contextlib.suppress(redis.RedisError):
                self._broker.wake_listener(self._client_id, STOP)
            thread.join(timeout=5)

    def _listen(self) -> None:
        conn = self._connect()
        backoff = 0.1
        missed = False
        while not self._closed.is_set():
            try:
                if missed:
                    self._read_stored(conn)
                    missed = False
                asked = time.monotonic()
                blobs = self._broker.pop_replies(conn, self._client_id, timeout=2)
                # A pop that had to wait found the inbox empty: its reply is likely the
                # only one, so go straight back to waiting (an idle round trip costs no
                # extra command). One answered at once may have a backlog behind it:
                # drain that, many replies per command.
                backlog = time.monotonic() - asked < _WAITED
                while blobs:
                    # Resolve the first reply before draining more: latency first.
                    for blob in blobs:
                        if blob != STOP:
                            self.resolve(blob)
                    blobs = self._broker.drain_replies(conn, self._client_id) if backlog else []
                backoff = 0.1
            except Exception as exc:  # a failover is an outage, never a dead listener
                if not isinstance(exc, REDIS_DOWN) and not transient(exc):
                    log.exception("reply listener: unexpected error; retrying in %.1f s", backoff)
                else:
                    log.warning("reply listener lost Redis (%s); retrying in %.1f s", exc, backoff)
                refresh(conn)  # a cluster's slots may have moved (a no-op elsewhere)
                missed = True
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)  # reconnect within a second of Redis
        conn.close()

    def _read_stored(self, conn: redis.Redis) -> None:
        """Replies popped just before the connection dropped (e.g. Redis was killed between
        its AOF fsync and the reply) are gone; the outcomes of tasks that keep their result
        are stored: read those instead."""
        waiting = self.waiting()
        for i in range(0, len(waiting), 1000):
            for raw in self._broker.stored_results(waiting[i:i + 1000], conn):
                if raw is not None:
                    self.resolve(raw)

    # -- resolving ----------------------------------------------------------------------

    def resolve(self, blob: bytes) -> None:
        """Resolve the futures of one inbox element (see :func:`each_reply`); a progress
        line goes to its task's callback."""
        each_reply(blob, self._resolve_one, self._progress)

    def _resolve_one(self, obj: Any) -> None:
        task_id = reply_id(obj)
        if task_id is None:
            return
        with self._lock:
            fut = self._futures.get(task_id)
        if fut is None or fut.done():
            self.forget(task_id)
            return  # a duplicate outcome, or cancelled meanwhile
        opened = open_reply(obj, task_id, self._secret())
        if opened is None:
            return
        ok, value = opened
        if self.forget(task_id) is not fut:
            return  # resolved by another reply meanwhile
        with contextlib.suppress(InvalidStateError):  # cancelled between check and set
            if not ok and is_cancelled(obj):
                if not fut.cancel():
                    fut.set_exception(CancelledError(str(value)))
            elif ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _progress(self, obj: Any) -> None:
        """A progress line: to its task's callback, if any (a bad one is skipped)."""
        task_id = obj.get("id") if isinstance(obj, dict) else None
        with self._lock:
            callback = self._on_progress.get(task_id) if isinstance(task_id, str) else None
        if callback is None:
            return
        try:
            callback(Progress.from_json(obj))
        except Exception as exc:  # the user's callback, or a bad line: the listener lives on
            log.warning("progress callback for task %s failed: %s", task_id, exc)


# -- the one reading of a reply, for both listeners (this thread and AsyncClient's) -------


def each_reply(blob: bytes, resolve_one: Callable[[Any], None],
               progress: Callable[[Any], None] | None = None) -> None:
    """Hand each outcome of one inbox element (a JSON array of outcomes, or one) to
    ``resolve_one``; a progress line ``{"progress": {...}}`` goes to ``progress`` (it is
    never an outcome; dropped without one). Whatever ``resolve_one`` raises (a payload's
    ``SystemExit`` too) is logged and skipped: the listener lives on."""
    try:
        objs = orjson.loads(blob)
    except orjson.JSONDecodeError:
        log.warning("ignoring a reply that is not JSON: %r", blob[:200])
        return
    if isinstance(objs, dict) and "progress" in objs:
        if progress is not None:
            progress(objs["progress"])
        return
    for obj in objs if isinstance(objs, list) else [objs]:
        try:
            resolve_one(obj)
        except BaseException as exc:  # whatever a payload does, the listener lives on
            log.warning("ignoring a reply that could not be handled (%s): %r",
                        type(exc).__name__, orjson.dumps(obj)[:200] if isinstance(obj, dict) else obj)


def reply_id(obj: Any) -> str | None:
    """The task id a reply names; None (logged) for a reply that names none."""
    task_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(task_id, str):
        log.warning("ignoring a malformed reply (no task id): %r", str(obj)[:200])
        return None
    return task_id


def open_reply(obj: dict[str, Any], task_id: str, secret: bytes | None) -> tuple[bool, Any] | None:
    """The one rule for accepting a reply for ``task_id``, a task this client waits for:
    with a ``secret`` it must be signed for that task (``os``, or ``xs`` for a pickled
    result), without one it must not be pickled (this client sent nothing pickled). Then
    (ok, value or exception), a chunk's value being its ChunkResult however it travelled.
    None (logged) for a reply to skip: the future keeps waiting for the genuine one."""
    if secret is None and "x" in obj:
        log.warning("ignoring a pickled reply for task %s: this client sent nothing pickled",
                    task_id)
        return None
    if secret is not None and not outcome_verifies(secret, task_id, obj):
        log.warning("ignoring a reply for task %s that is not signed for it: a forgery, "
                    "or a node without this TASKQ_SECRET", task_id)
        return None
    try:
        if "x" in obj:  # a pickled result: verified before it is unpickled
            from taskq import signed

            return signed.load_outcome(obj, secret)
        outcome = decode_outcome(obj)
        return (True, outcome.value) if outcome.ok else (False, outcome.exception())
    except Exception as exc:  # a reply naming our task but of a bad shape
        log.warning("ignoring a malformed reply for task %s: %s", task_id, exc)
        return None
