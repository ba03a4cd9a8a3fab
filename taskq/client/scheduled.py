"""The enqueue path of calls that do not go straight to the stream: delayed
(``delay=`` / ``eta=``) and deduplicated (``dedup_key=``) ones. :class:`Client` hands
them here; each is one script call in the caller's thread (not group-committed: a dedup
apply must know at once which task it is a future for).

Delayed: the entry waits in the queue's delayed set and any node promotes it when due
(every 0.25 s, so it starts within a few hundred ms of its time). A signed envelope
expires ``message_ttl`` after it is due, not after it was sent.

Dedup: the task id is ``dd-<hex of the key>-<unique>`` (complete.lua reads the key back
from it) and the call keeps its result. If the key already names a task, this client
joins that key's waiters and gets a future for that task id: the completion script
pushes the outcome to the first producer and to every waiter, and stores it. The future
also reads the stored outcome right after it is tracked, so an outcome that came
between the script and the tracking (or, with ``dedup_ttl``, long before: the key
outlives its task for that long) resolves it too. Calls of one client with one key get
the same Future object.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from taskq.broker import REDIS_DOWN, unreachable
from taskq.broker.keys import dedup_task_id
from taskq.broker.queue import Signed
from taskq.broker.schedule import Scheduling
from taskq.client.batch import Batch
from taskq.client.calls import CallOptions, TaskRef
from taskq.client.watchdog import mark_sent
from taskq.message import TaskMessage
from taskq.signing import sign

if TYPE_CHECKING:
    from taskq.client.client import Client


def scheduling(client: Client) -> Scheduling:
    """The client's scheduling scripts (registered on first use)."""
    ops: Scheduling | None = getattr(client, "_scheduling", None)
    if ops is None:
        ops = Scheduling(client.broker)
        client._scheduling = ops  # type: ignore[attr-defined]
    return ops


def envelope(client: Client, msg: TaskMessage, due: float | None) -> Signed:
    """The envelope of ``msg``, checked as every envelope is; a signed one that waits
    until ``due`` is signed to expire ``message_ttl`` after that."""
    body, signature = client._envelope(msg)
    secret = client.settings.secret
    if due is None or secret is None:
        return body, signature
    body = msg.encode(due + client.message_ttl)
    return body, sign(secret, client.queue, body)


def _delayed_entry_id(due_ms: int) -> bytes:
    """A stream id just before any the entry can get once promoted: where the lost-task
    watchdog starts looking for it (it finds it in the delayed set until then)."""
    return b"%d-0" % (due_ms - 1)


def apply(client: Client, fn: TaskRef, args: Sequence[Any], kwargs: dict[str, Any] | None,
          options: CallOptions) -> Future[Any]:
    """One delayed and/or deduplicated call; its Future."""
    due = options.due(time.time())
    if due is None and options.dedup_key is None:  # delay=0, or an eta that has passed
        return client.submit_message(client.message(fn, args, kwargs, options=options))
    due_ms = None if due is None else int(due * 1000)
    if options.dedup_key is not None:
        unique = f"{client.client_id}-{next(client._ids)}"
        options = replace(options, task_id=dedup_task_id(options.dedup_key, unique))
    msg = client.message(fn, args, kwargs, options=options)
    env = envelope(client, msg, due)
    (fut,) = client._replies.track([msg.id])
    try:
        if options.dedup_key is None:
            assert due_ms is not None
            scheduling(client).enqueue_delayed([env], due_ms)
            mark_sent(fut, _delayed_entry_id(due_ms), time.monotonic())
        else:
            fut = _dedup(client, fut, msg.id, env, options, due_ms)
    except REDIS_DOWN as exc:
        client._replies.forget(msg.id)
        raise unreachable(client.url, exc) from None
    except BaseException:
        client._replies.forget(msg.id)
        raise
    client._watchdog.start()
    return fut


def _dedup(client: Client, fut: Future[Any], task_id: str, env: Signed,
           options: CallOptions, due_ms: int | None) -> Future[Any]:
    assert options.dedup_key is not None
    record = scheduling(client).dedup_enqueue(options.dedup_key, task_id, env,
                                              options.dedup_ttl, due_ms, client.client_id)
    entry = record.entry_id
    if record.created:
        mark_sent(fut, entry or _delayed_entry_id(due_ms or 0), time.monotonic())
        return fut
    client._replies.forget(task_id)
    mine = [f for f in client._replies.waiting_futures()
            if getattr(f, "task_id", None) == record.task_id]
    if mine:  # this client's own earlier call with the key: the same Future
        return mine[0]
    (other,) = client._replies.track([record.task_id])
    if entry is not None:
        mark_sent(other, entry, time.monotonic())
    stored = client.broker.result(record.task_id)
    if stored is not None:
        client._replies.resolve(stored)
    return other


def submit_many(client: Client, fn: TaskRef, arglists: Iterable[Sequence[Any]],
                batch: bool, reduce: str | None, delay: float
                ) -> tuple[list[Future[Any]], Batch | None]:
    """:meth:`Client.submit_many` of calls held for ``delay`` seconds (one script call)."""
    due = CallOptions(delay=delay).due(time.time())
    due_ms = int((due or time.time()) * 1000)
    batch_id = os.urandom(6).hex() if batch else None
    messages = [client.message(fn, args, options=CallOptions(
        batch=batch_id, task_id=f"{batch_id}.{i}" if batch_id else None))
        for i, args in enumerate(arglists)]
    envelopes = [envelope(client, m, due) for m in messages]
    futures = client._replies.track([m.id for m in messages])
    extra = {"reduce": reduce} if reduce else {}
    try:
        scheduling(client).enqueue_delayed(
            envelopes, due_ms,
            None if batch_id is None else (batch_id, client.settings.result_ttl, extra))
    except BaseException as exc:
        for m in messages:
            client._replies.forget(m.id)
        if isinstance(exc, REDIS_DOWN):
            raise unreachable(client.url, exc) from None
        raise
    now = time.monotonic()
    for fut in futures:
        mark_sent(fut, _delayed_entry_id(due_ms), now)
    client._watchdog.start()
    return futures, Batch(client, batch_id, len(messages)) if batch_id else None
