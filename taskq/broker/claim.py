"""The node's claim: one ``XREADGROUP`` over its queue streams, kept outstanding while
the node loop waits on its pool.

:class:`Claimer` is what the node loop needs of a claim: send one, give it something to
wait on, tell whether the answer is in, read it, drop it. Two implementations:

- :class:`Claim`, the real one: a blocking ``XREADGROUP`` on a connection of its own,
  whose socket the loop waits on, so new tasks are read the moment they arrive, between
  pool events;
- :class:`SyncClaim`, for in-process use on any client (fakeredis included, which has no
  socket to wait on): ``read`` does one non-blocking ``XREADGROUP`` through the client,
  and the answer counts as in as soon as the claim is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from redis.connection import Connection

from taskq.broker.connection import connection_pool
from taskq.broker.keys import GROUP
from taskq.message import Entry


class Claimer(Protocol):
    """At most one claim at a time for one consumer on a fixed list of streams."""

    @property
    def outstanding(self) -> bool: ...

    def send(self, count: int, block: float | None) -> None:
        """Ask for up to ``count`` new entries; ``block`` seconds to wait (None: don't)."""

    def waitable(self) -> Any:
        """Something ``multiprocessing.connection.wait`` can wait on for the answer, or
        None when there is nothing to wait on (then ask :meth:`ready`)."""

    def ready(self) -> bool:
        """Has the answer arrived? (Raises if the server hung up.)"""

    def read(self) -> dict[int, list[Entry]]:
        """The answer, by stream index; empty when the claim found nothing."""

    def drop(self) -> None:
        """Abandon the outstanding claim, if any."""

    def close(self) -> None:
        """Drop, and release the connections."""


def _entries(reply: Any, index: dict[bytes, int]) -> dict[int, list[Entry]]:
    out: dict[int, list[Entry]] = {}
    # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
    for stream, rows in reply.items() if isinstance(reply, dict) else reply or ():
        out[index[stream]] = [Entry.from_fields(eid, f) for eid, f in rows if f]
    return out


class Claim:
    """A blocking claim for ``consumer`` on ``streams`` on a connection of its own,
    whose socket the node loop waits on."""

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
        return _entries(reply, self._index)

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


class SyncClaim:
    """A claim answered in-process: ``read`` runs one non-blocking ``XREADGROUP`` through
    ``client``. It never blocks (``block`` is ignored): the node loop's own wait on its
    pool is the wait, and ``ready()`` is True as soon as a claim is sent."""

    def __init__(self, client: redis.Redis, streams: Sequence[str], consumer: str) -> None:
        self._client = client
        self._streams = list(streams)
        self._index = {s.encode(): i for i, s in enumerate(self._streams)}
        self._consumer = consumer
        self._count: int | None = None

    @property
    def outstanding(self) -> bool:
        return self._count is not None

    def send(self, count: int, block: float | None) -> None:
        assert self._count is None, "one claim at a time"
        self._count = count

    def waitable(self) -> None:
        return None

    def ready(self) -> bool:
        return self._count is not None

    def read(self) -> dict[int, list[Entry]]:
        count = self._count
        assert count is not None
        self._count = None  # a failed read is a dropped claim, as with a lost connection
        reply: Any = self._client.xreadgroup(
            GROUP, self._consumer, dict.fromkeys(self._streams, ">"), count=count)
        return _entries(reply, self._index)

    def drop(self) -> None:
        self._count = None

    def close(self) -> None:
        self.drop()
