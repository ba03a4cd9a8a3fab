"""A node's completion call kept off its event loop's critical path.

``complete.lua`` (:meth:`taskq.broker.queue.Broker.complete`) is sent as one ``EVALSHA``
on a connection of its own; the node loop waits on that connection's socket beside its
pool and its claim, and reads the answer once it is in. Meanwhile it keeps claiming and
dispatching: with Redis a network hop away a blocking completion cost one round trip per
loop turn, every turn. At most one call per queue is outstanding (the outcomes that
finish meanwhile go in the next one), so a queue's outcomes are applied in order.

On a cluster the connection is to the master of the queue's slot, and follows it
(:func:`taskq.broker.connection.connection_pool`).
"""

from __future__ import annotations

import socket

from taskq.broker.blocking import BlockingRead
from taskq.broker.connection import connection_pool
from taskq.broker.queue import Broker, completion_result
from taskq.message import Report


class Completion:
    """At most one completion call of one queue outstanding, on a connection of its own."""

    def __init__(self, broker: Broker, url: str, *, socket_timeout: float = 10.0) -> None:
        self.broker = broker
        self._read = BlockingRead(connection_pool(
            url, key=broker.keys.stream, socket_timeout=socket_timeout,
            socket_connect_timeout=5.0))

    def waitable(self) -> socket.socket | None:
        return self._read.waitable()

    def send(self, consumer: str, reports: list[tuple[bytes, Report]], result_ttl: float) -> None:
        """Send the call for ``reports``; its answer is read later (:meth:`read`)."""
        keys, argv = self.broker.completion_call(consumer, reports, result_ttl)
        self._read.send("EVALSHA", self.broker.complete_sha, len(keys), *keys, *argv)

    def ready(self) -> bool:
        """Has the answer arrived? (Raises if the server hung up.)"""
        return self._read.ready()

    def read(self) -> tuple[int, int]:
        """(applied, suppressed); blocks until the answer is in (up to the socket timeout).
        Raises ``NoScriptError`` on a server that lost its scripts (restarted): nothing was
        applied, the caller sends the call again through the broker, which loads it."""
        return completion_result(self._read.read())

    def drop(self) -> None:
        """Abandon the outstanding call: whether it was applied is unknown, so its outcomes
        are sent again (a second application is suppressed: the entries are gone)."""
        self._read.drop()

    def close(self) -> None:
        self._read.close()
