"""One blocking read kept outstanding on a connection of its own, from a pool.

The node loop never blocks on Redis: a blocking command (the claim's ``XREADGROUP``, the
control stream's ``XREAD``) is sent on a connection taken from a pool, the loop waits on
that connection's socket beside its other waitables, and the answer is read only once it
is in. :class:`BlockingRead` is that pattern, written once for
:mod:`taskq.broker.claim` and :mod:`taskq.broker.control`.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis.connection import Connection


class BlockingRead:
    """At most one command outstanding on a connection of its own from ``pool``."""

    __slots__ = ("_conn", "pool")

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._conn: Connection | None = None

    @property
    def outstanding(self) -> bool:
        return self._conn is not None

    def waitable(self) -> socket.socket | None:
        """The socket to wait on while a command is outstanding."""
        return None if self._conn is None else self._conn._sock

    def send(self, *args: Any) -> None:
        """Send one command on a connection of its own; its answer is read later."""
        assert self._conn is None, "one blocking read at a time"
        conn = self._conn = self.pool.get_connection()
        try:
            conn.send_command(*args)  # type: ignore[no-untyped-call]
        except BaseException:
            self.drop()
            raise

    def ready(self) -> bool:
        """Has the answer arrived? (Raises if the server hung up, and drops.)"""
        if self._conn is None:
            return False
        try:
            return bool(self._conn.can_read(timeout=0))
        except BaseException:
            self.drop()
            raise

    def read(self) -> Any:
        """The answer (it must be in, or this blocks); the connection goes back to the
        pool. On an error it is dropped, never reused half-read."""
        conn = self._conn
        assert conn is not None
        try:
            reply = conn.read_response()
        except BaseException:
            self.drop()
            raise
        self._conn = None
        self.pool.release(conn)
        return reply

    def drop(self) -> None:
        """Abandon the outstanding command: its connection is closed (an unread answer
        would come first on the next command) and released."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()  # type: ignore[no-untyped-call]
            self.pool.release(conn)

    def close(self) -> None:
        self.drop()
        self.pool.disconnect()
