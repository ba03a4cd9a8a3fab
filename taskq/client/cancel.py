"""Cancel, producer side: ``Client.cancel`` and ``Client.cancel_batch``.

A task is found by its stream entry: a Future of this client knows it (the writer notes
it on the Future, :func:`taskq.client.watchdog.mark_sent`), so cancelling one's own task
costs the submit path nothing; a bare task id is looked up in the stream, bounded
(:func:`taskq.broker.control.find_entries`). Then ``cancel.lua`` decides atomically
against the nodes' claims: a queued entry is deleted and recorded as cancelled (it never
starts); a claimed one gets a tombstone and its node (the consumer group's owner) a
control message, and that node kills the process running it. A task waiting out a
retry's backoff is not cancelled (it is in no stream).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from taskq.broker.control import (
    CANCELLED_QUEUED,
    CLAIMED,
    GONE,
    cancel_entry,
    cancelled_outcome,
    entry_routing,
    find_entries,
    send_control,
)
from taskq.client.watchdog import SENT

if TYPE_CHECKING:
    from taskq.client.client import Client

FLUSH_TIMEOUT = 5.0
"""Seconds to wait for the sender to write a just-submitted task before cancelling it."""


def cancel(client: Client, task: Future[Any] | str) -> bool:
    """See :meth:`taskq.client.client.Client.cancel`."""
    fut = task if isinstance(task, Future) else None
    task_id = task if isinstance(task, str) else task.task_id  # type: ignore[attr-defined]
    entry_id = _known_entry(client, fut) if fut is not None else None
    state = GONE if entry_id is None else _cancel_one(client, task_id, entry_id)
    if state == GONE:  # not where we last saw it (e.g. queued again after a retry): look
        found = find_entries(client.redis, client.broker.keys, {task_id}).get(task_id)
        if found is not None and found != entry_id:
            state = _cancel_one(client, task_id, found)
    if state == CANCELLED_QUEUED and fut is not None:
        client._replies.forget(task_id)  # its reply is in the inbox: the future knows now
        fut.cancel()
    return state != GONE


def cancel_batch(client: Client, batch_id: str) -> int:
    """See :meth:`taskq.client.client.Client.cancel_batch`: one scan of the stream."""
    total = int(client.broker.batch_status(batch_id).get("total", 0))
    wanted = {f"{batch_id}.{i}" for i in range(total)}
    found = find_entries(client.redis, client.broker.keys, wanted) if wanted else {}
    return sum(_cancel_one(client, task_id, entry_id) != GONE
               for task_id, entry_id in found.items())


def _known_entry(client: Client, fut: Future[Any]) -> bytes | None:
    if not hasattr(fut, SENT) and not fut.done():
        client.flush(FLUSH_TIMEOUT)  # still in the sender's buffer: written first
    sent = getattr(fut, SENT, None)
    return sent[0] if sent else None


def _cancel_one(client: Client, task_id: str, entry_id: bytes) -> int:
    """cancel.lua on one entry, then the control message to the node that holds it."""
    keys = client.broker.keys
    routing = entry_routing(client.redis, keys, entry_id)
    if routing is None or routing.task_id != task_id:
        return GONE
    outcome = cancelled_outcome(task_id, client.settings.secret)
    state, owner = cancel_entry(client.redis, keys, entry_id, routing, outcome,
                                client.settings.result_ttl)
    if state == CLAIMED:
        send_control(client.redis, owner, {"cancel": task_id, "entry": entry_id.decode(),
                                           "queue": client.queue})
    return state
