"""Many stream appends in one round trip, packed by hand.

A redis-py pipeline spends about 10 µs of Python per command building, packing and
parsing it: enqueueing 100,000 tasks cost more there than in everything else. The
envelopes taskq appends all have the same shape (``XADD <stream> * m <body> [s <sig>]``),
so their RESP is one ``%``-format per entry, and the replies are read with the
connection's own (hiredis) parser. The writes are sent in slices, and each slice's
replies are read while Redis works on the next one, so the producer's packing and
reading overlap Redis's appending.

It speaks for one key's slot, as :class:`taskq.broker.cluster._SlotPipeline` does, and
rides out a failover the same way (:func:`taskq.broker.cluster.follow_failover`): on a
cluster the commands go to the master of the stream's slot; a write the server refused
whole is sent again once after a topology refresh; a lost connection is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from taskq.broker.cluster import REFUSED, follow_failover, slot_client

Command = Sequence[Any]
"""A plain command (name and arguments) sent before or after the appends."""

_SLICE = 2000
"""Entries per write: large enough to amortize a send, small enough that the replies of
one slice are read while Redis appends the next."""


def append_many(client: redis.Redis, stream: str, entries: Sequence[tuple[bytes, bytes | None]],
                before: Sequence[Command] = (), after: Sequence[Command] = ()) -> list[Any]:
    """``before``, then ``XADD stream * m body [s signature]`` for every entry, then
    ``after``, on one connection of the master that owns ``stream``'s slot; every reply,
    in order (entry ids for the appends). Raises the first error reply after reading all
    of them (the connection stays in step)."""
    def write() -> list[Any]:  # on the slot's master as the map says now
        return _send(slot_client(client, stream), stream, entries, before, after)

    return follow_failover(client, write, write)


def _send(target: redis.Redis, stream: str, entries: Sequence[tuple[bytes, bytes | None]],
          before: Sequence[Command], after: Sequence[Command]) -> list[Any]:
    pool = target.connection_pool
    conn: Any = pool.get_connection()
    try:
        # Retried on a lost connection as the client's own commands are (its retry policy).
        replies: list[Any] = conn.retry.call_with_retry(
            lambda: _exchange(conn, stream.encode(), entries, before, after),
            lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()  # replies may be unread: never hand this connection out again
        raise
    finally:
        pool.release(conn)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            if isinstance(reply, REFUSED) and not all(isinstance(r, REFUSED) for r in replies):
                # Refused after some were applied (a failover mid-write): not safe to
                # send whole again here; the caller's outage handling decides.
                raise redis.ConnectionError(f"write partly applied: {reply}")
            raise reply
    return replies


def _exchange(conn: Any, stream: bytes, entries: Sequence[tuple[bytes, bytes | None]],
              before: Sequence[Command], after: Sequence[Command]) -> list[Any]:
    """Send everything in slices; read each slice's replies after sending the next."""
    signed = b"*7\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n" % (len(stream), stream)
    unsigned = b"*5" + signed[2:]
    tail = b"\r\n$1\r\ns\r\n"
    replies: list[Any] = []
    unread = 0
    head = conn.pack_commands(before) if before else []
    last = len(entries) - _SLICE
    for start in range(0, max(len(entries), 1), _SLICE):
        packets = [
            b"%s$%d\r\n%s%s$%d\r\n%s\r\n" % (signed, len(body), body, tail, len(sig), sig)
            if sig else b"%s$%d\r\n%s\r\n" % (unsigned, len(body), body)
            for body, sig in entries[start:start + _SLICE]
        ]
        count = len(packets)
        if start == 0 and head:  # the commands before go out with the first slice...
            packets[:0] = head
            count += len(before)
        if start >= last and after:  # ...and the ones after with the last: one send if small
            packets.extend(conn.pack_commands(after))
            count += len(after)
        conn.send_packed_command([b"".join(packets)], check_health=False)
        _read(conn, unread, replies)
        unread = count
    _read(conn, unread, replies)
    return replies


def _read(conn: Any, count: int, into: list[Any]) -> None:
    for _ in range(count):
        try:
            into.append(conn.read_response())
        except redis.ResponseError as exc:  # an error reply: keep reading, stay in step
            into.append(exc)
