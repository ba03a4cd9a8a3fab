"""The node's claim: one blocking ``XREADGROUP`` over its queue streams, kept outstanding
on a connection of its own while the node loop waits on its pool.

The node sends the claim and goes on; the claim's socket is one of the things the loop
waits on, so new tasks are read the moment they arrive, between pool events.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import Connection

from taskq.broker.connection import connection_pool
from taskq.broker.keys import GROUP
from taskq.message import Entry


class Claim:
    """An outstanding claim for ``consumer`` on ``streams`` (at most one at a time)."""

    def __init__(self, pool: redis.ConnectionPool | str, streams: Sequence[str], consumer: str,
                 *, socket_timeout: float = 10.0) -> None:
        self._pool = (connection_pool(pool, socket_timeout=socket_timeout,
                                      socket_connect_timeout=5.0)
                      if isinstance(pool, str) else pool)
        self._streams = list(streams)
        self._index = {s.encode(): i for i, s in enumerate(self._streams)}
        self._consumer = consumer
        self._conn: Connection | None = None

    @property
    def outstanding(self) -> bool:
        return self._conn is not None

    def waitable(self) -> socket.socket | None:
        """The socket to wait on while the claim is outstanding."""
        return None if self._conn is None else self._conn._sock

    def send(self, count: int, block: float | None) -> None:
        """Ask for up to ``count`` new entries; ``block`` seconds to wait (None: don't)."""
        assert self._conn is None, "one claim at a time"
        conn = self._pool.get_connection()
        args: list[Any] = ["XREADGROUP", "GROUP", GROUP, self._consumer, "COUNT", count]
        if block is not None:
            args += ["BLOCK", int(block * 1000)]
        args += ["STREAMS", *self._streams, *(">" for _ in self._streams)]
        self._conn = conn
        try:
            conn.send_command(*args)  # type: ignore[no-untyped-call]
        except BaseException:
            self.drop()
            raise

    def ready(self) -> bool:
        """Has the answer arrived? (Raises if the server hung up.)"""
        return self._conn is not None and bool(self._conn.can_read(timeout=0))

    def read(self) -> dict[int, list[Entry]]:
        """The answer, by stream index; empty when the claim found nothing."""
        conn = self._conn
        assert conn is not None
        try:
            reply = conn.read_response()
        except BaseException:
            self.drop()
            raise
        self._conn = None
        self._pool.release(conn)
        out: dict[int, list[Entry]] = {}
        # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
        for stream, rows in reply.items() if isinstance(reply, dict) else reply or ():
            out[self._index[stream]] = [Entry.from_fields(eid, f) for eid, f in rows if f]
        return out

    def drop(self) -> None:
        """Abandon the outstanding claim; anything it delivered stays pending under this
        consumer and is handed back or reclaimed, never lost."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()  # type: ignore[no-untyped-call]
            self._pool.release(conn)

    def close(self) -> None:
        self.drop()
        self._pool.disconnect()
