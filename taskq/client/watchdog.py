"""The lost-task watchdog: a future whose task Redis no longer knows fails, never hangs.

If Redis restarts without its data (or is flushed) while tasks wait or run, their stream
entries are gone, a node's late report is suppressed, and no reply will ever come. So a
client's futures that have waited longer than a lease are checked now and then: is the
task's entry still in the stream (queued or running), is its outcome stored (done: it is
resolved from there), is it waiting out a retry's backoff or queued again after one? A
task that is none of those for longer than another lease fails with
:class:`~taskq.errors.TaskLostError`. The reads are bounded and pipelined (chunks of
1000); a future is checked at most once per half lease, and the check costs the submit
path nothing (the entry id is written on the future by the sender thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import redis

from taskq.broker import Broker
from taskq.errors import TaskLostError

log = logging.getLogger("taskq.client")

CHUNK = 1000
SENT = "_taskq_sent"
"""Attribute of a Future: [stream entry id, monotonic time sent, time first missed or 0]."""


def mark_sent(fut: Future[Any], entry_id: bytes, now: float) -> None:
    """Note where (and when) a future's task was queued: called by the writer."""
    setattr(fut, SENT, [entry_id, now, 0.0])


class Watchdog:
    """One daemon thread per client, checking every ``lease / 2`` seconds."""

    def __init__(self, broker: Broker, lease: float,
                 waiting: Callable[[], Sequence[Future[Any]]],
                 resolve: Callable[[bytes], None],
                 forget: Callable[[str], Future[Any] | None]) -> None:
        self._broker, self._lease = broker, lease
        self._waiting, self._resolve, self._forget = waiting, resolve, forget
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="taskq-watchdog")
                    self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._lease / 2):
            try:
                self.check(time.monotonic())
            except redis.RedisError as exc:  # an outage: the listener reports it
                log.debug("lost-task check skipped: %s", exc)

    def check(self, now: float) -> int:
        """One round over the futures waiting longer than a lease; how many failed."""
        old = [(f, getattr(f, SENT)) for f in self._waiting()
               if not f.done() and hasattr(f, SENT) and now - getattr(f, SENT)[1] > self._lease]
        missing: list[tuple[Future[Any], list[Any]]] = []
        for i in range(0, len(old), CHUNK):
            part = old[i:i + CHUNK]
            states = self._broker.task_states([(f.task_id, s[0]) for f, s in part])  # type: ignore[attr-defined]
            for (fut, sent), (queued, outcome) in zip(part, states, strict=True):
                if outcome is not None:
                    self._resolve(outcome)  # done, its reply lost: the stored outcome
                elif queued:
                    sent[2] = 0.0
                else:
                    missing.append((fut, sent))
        return self._judge(missing, now)

    def _judge(self, missing: list[tuple[Future[Any], list[Any]]], now: float) -> int:
        """Tasks whose entry is gone: found in a retry's backoff or queued again (then
        followed there), else failed once they have been missing for a lease."""
        failed = 0
        for i in range(0, len(missing), CHUNK):
            part = missing[i:i + CHUNK]
            after = min(s[0] for _, s in part)
            found, complete = self._broker.locate([f.task_id for f, _ in part], after)  # type: ignore[attr-defined]
            for fut, sent in part:
                task_id = fut.task_id  # type: ignore[attr-defined]
                if task_id in found or not complete:
                    moved = found.get(task_id)
                    if moved is not None:
                        sent[0] = moved
                    sent[2] = 0.0  # still somewhere (or not all was read): not lost
                elif not sent[2]:
                    sent[2] = now
                elif now - sent[2] > self._lease and self._forget(task_id) is fut:
                    failed += _fail(fut, task_id)
        return failed


def _fail(fut: Future[Any], task_id: str) -> bool:
    try:
        fut.set_exception(TaskLostError(
            f"task {task_id} is gone from Redis (it restarted without its data, or was "
            "flushed): it is neither queued, running, delayed nor done"))
    except InvalidStateError:  # cancelled meanwhile
        return False
    log.warning("task %s is lost: Redis no longer knows it", task_id)
    return True
