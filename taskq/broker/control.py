"""Cancel and progress in Redis: the per-node control stream, the cancel script, the
tombstones of claimed tasks and the progress keys. Nothing here decodes a task beyond
its routing (:func:`taskq.message.routing_of`).

- A node reads its control stream ``taskq:node:<id>:ctl`` with one blocking ``XREAD``
  kept outstanding on a connection of its own (:class:`ControlReader`, whose socket the
  node loop waits on beside the claim's), so a message is seen at once at any load and
  costs nothing while none comes. In process (fakeredis) :class:`SyncControlReader`
  reads without blocking, when the loop asks.
- :func:`cancel_entry` runs ``cancel.lua``: a queued entry is deleted and recorded as
  cancelled atomically against any node's claim; a claimed one gets a tombstone (read
  when another node reclaims it) and a control message to the node that holds it (the
  consumer group names it).
- Progress: the node parent writes a running task's last progress into
  ``taskq:{q}:progress:<task>`` (with a TTL) and a ``{"progress": {...}}`` line into its
  producer's inbox, one pipelined round trip for everything due.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis

from taskq.broker.blocking import BlockingRead
from taskq.broker.connection import connection_pool
from taskq.broker.keys import GROUP, QueueKeys, node_control
from taskq.broker.queue import load_script
from taskq.message import Routing, routing_of
from taskq.outcome import encode_error
from taskq.signing import sign_outcome

CONTROL_MAXLEN = 1000
"""Control streams are trimmed (approximately) to this: old messages have been read."""
CONTROL_TTL_MS = 3600_000
"""A control stream of a node that is gone expires after this long."""
TOMBSTONE_TTL_MS = 24 * 3600_000
SCAN_MOST = 100_000
"""Entries of a stream read at most to find a task id whose entry id is not known."""


# -- the control stream ---------------------------------------------------------------


def send_control(client: redis.Redis, node_id: str, message: dict[str, str]) -> None:
    """Append ``message`` to the node's control stream (one pipelined round trip)."""
    key = node_control(node_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, message, maxlen=CONTROL_MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.pexpire(key, CONTROL_TTL_MS)
    pipe.execute()


def drop_control(client: redis.Redis, node_id: str) -> None:
    """Delete the node's control stream (best effort, on the way out)."""
    with contextlib.suppress(redis.RedisError):
        client.delete(node_control(node_id))


def _messages(reply: Any) -> tuple[list[dict[str, str]], bytes | None]:
    """The messages of an XREAD answer on one stream, and the last id read."""
    out: list[dict[str, str]] = []
    last: bytes | None = None
    for _stream, rows in reply.items() if isinstance(reply, dict) else reply or ():
        for entry_id, fields in rows:
            last = entry_id
            if not isinstance(fields, dict):  # a raw reply: [k1, v1, k2, v2, ...]
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out, last


class ControlReader:
    """A blocking ``XREAD`` on one node's control stream, kept outstanding on a
    connection of its own; the node loop waits on :meth:`waitable` and calls
    :meth:`poll` every turn (it reads only when the answer is in)."""

    def __init__(self, url: str, node_id: str, *, block: float = 2.0,
                 socket_timeout: float = 10.0) -> None:
        self._key = node_control(node_id)
        self._read = BlockingRead(connection_pool(url, key=self._key,
                                                  socket_timeout=socket_timeout,
                                                  socket_connect_timeout=5.0))
        self._block_ms = int(block * 1000)
        self._last = b"0-0"  # the stream is new with the node (its id is unique)

    def waitable(self) -> socket.socket | None:
        return self._read.waitable()

    def poll(self) -> list[dict[str, str]]:
        """Messages that arrived (reads only if the answer is in), then a read is kept
        outstanding again. Raises on a lost connection (the loop's outage handling)."""
        out: list[dict[str, str]] = []
        if self._read.outstanding:
            if not self._read.ready():
                return out
            out, last = _messages(self._read.read())
            if last is not None:
                self._last = last
        self._read.send("XREAD", "BLOCK", self._block_ms, "STREAMS", self._key, self._last)
        return out

    def drop(self) -> None:
        self._read.drop()

    def close(self) -> None:
        self._read.close()


class SyncControlReader:
    """The control stream read without blocking through any client (fakeredis
    included): :meth:`poll` is one ``XREAD``; nothing to wait on."""

    def __init__(self, client: redis.Redis, node_id: str) -> None:
        self._client, self._key, self._last = client, node_control(node_id), b"0-0"

    def waitable(self) -> None:
        return None

    def poll(self) -> list[dict[str, str]]:
        reply: Any = self._client.xread({self._key: self._last}, count=100)
        out, last = _messages(reply)
        if last is not None:
            self._last = last
        return out

    def drop(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- cancel -----------------------------------------------------------------------------

GONE, CANCELLED_QUEUED, CLAIMED = 0, 1, 2
CANCELLED_TYPE = "CancelledError"
"""The error type of a cancelled outcome (a task's own exceptions are named with their
module, so none is spelled like this); the producer's future raises
``concurrent.futures.CancelledError`` for it."""


def cancelled_outcome(task_id: str, secret: bytes | None, why: str = "cancelled") -> bytes:
    """The outcome JSON recorded for a cancelled task, signed for it with ``secret``."""
    outcome = encode_error(task_id, (CANCELLED_TYPE, f"task {task_id} was {why}", ""))
    return outcome if secret is None else sign_outcome(secret, task_id, outcome)


def is_cancelled(obj: dict[str, Any]) -> bool:
    """Is the parsed outcome ``obj`` a cancelled one?"""
    err = obj.get("e")
    return obj.get("ok") is False and isinstance(err, list) and bool(err) and err[0] == CANCELLED_TYPE


def find_entries(client: redis.Redis, keys: QueueKeys, task_ids: set[str],
                 most: int = SCAN_MOST) -> dict[str, bytes]:
    """The stream entry ids of ``task_ids`` (queued or running) found reading at most
    ``most`` entries in chunks of 1000. A few ids are matched as bytes first, so only
    candidate envelopes are parsed."""
    needles = [b'"id":' + orjson.dumps(t) for t in task_ids] if len(task_ids) <= 8 else None
    found: dict[str, bytes] = {}
    start: bytes | str = "-"
    read = 0
    while read < most and len(found) < len(task_ids):
        rows: Any = client.xrange(keys.stream, start, "+", count=1000)
        for entry_id, fields in rows:
            body = fields.get(b"m", b"")
            if needles is not None and not any(n in body for n in needles):
                continue
            routing = routing_of(body)
            if routing is not None and routing.task_id in task_ids:
                found[routing.task_id] = entry_id
        read += len(rows)
        if len(rows) < 1000:
            break
        start = b"(" + rows[-1][0]
    return found


def entry_routing(client: redis.Redis, keys: QueueKeys, entry_id: bytes) -> Routing | None:
    """The routing of the entry ``entry_id`` if it is still in the stream."""
    rows: Any = client.xrange(keys.stream, entry_id, entry_id, count=1)
    if not rows:
        return None
    return routing_of(rows[0][1].get(b"m", b""))


def cancel_entry(client: redis.Redis, keys: QueueKeys, entry_id: bytes, routing: Routing,
                 outcome: bytes, result_ttl: float) -> tuple[int, str]:
    """Run cancel.lua for one entry: (GONE | CANCELLED_QUEUED | CLAIMED, owner node)."""
    script = load_script(client, __package__, "cancel")
    batch = routing.batch or ""
    key_list = [keys.stream, keys.stats, keys.cancelled, keys.result(routing.task_id),
                keys.inbox(routing.reply_to or ""), keys.batch(batch), keys.batch_events(batch)]
    args: list[Any] = [GROUP, entry_id, routing.task_id, outcome, int(result_ttl * 1000),
            int(routing.keep_result), int(bool(routing.reply_to)), int(bool(routing.batch)),
            TOMBSTONE_TTL_MS]
    state, owner = script(keys=key_list, args=args)
    return int(state), owner.decode() if isinstance(owner, bytes) else str(owner)


def tombstoned(client: redis.Redis, keys: QueueKeys, task_ids: Sequence[str]) -> list[bool]:
    """Which of ``task_ids`` were cancelled after a node claimed them (one HMGET)."""
    if not task_ids:
        return []
    raw: Any = client.hmget(keys.cancelled, list(task_ids))
    return [v is not None for v in raw]


# -- progress ---------------------------------------------------------------------------


def write_progress(client: redis.Redis, items: Sequence[tuple[QueueKeys, Routing, bytes]],
                   ttl: float) -> None:
    """Store each (queue keys, routing, progress JSON) and push it to its producer's
    inbox as ``{"progress": ...}``: one pipelined round trip."""
    if not items:
        return
    ms = int(ttl * 1000)
    pipe = client.pipeline(transaction=False)
    for keys, routing, blob in items:
        pipe.set(keys.progress(routing.task_id), blob, px=ms)
        if routing.reply_to:
            inbox = keys.inbox(routing.reply_to)
            pipe.rpush(inbox, b'{"progress":' + blob + b"}")
            pipe.pexpire(inbox, ms)
    pipe.execute()


def read_progress(client: redis.Redis, keys: QueueKeys, task_id: str) -> bytes | None:
    raw: Any = client.get(keys.progress(task_id))
    return cast("bytes | None", raw)
