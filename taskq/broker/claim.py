"""The node's claim: one ``XREADGROUP`` over its queue streams, kept outstanding while
the node loop waits on its pool.

:class:`Claimer` is what the node loop needs of a claim: send one, give it something to
wait on, tell whether the answer is in, read it, drop it. Two implementations:

- :class:`Claim`, the real one: a blocking ``XREADGROUP`` on a connection of its own,
  whose socket the loop waits on, so new tasks are read the moment they arrive, between
  pool events;
- :class:`SyncClaim`, for in-process use on any client (fakeredis included, which has no
  socket to wait on): ``read`` does one non-blocking ``XREADGROUP`` through the client,
  and the answer counts as in as soon as the claim is sent;
- :class:`ClusterClaim`, for a Redis Cluster: one ``XREADGROUP`` over two queues' streams
  is CROSSSLOT there, so it keeps one :class:`Claim` per queue outstanding on the
  connection to that queue's master, and gives the loop one thing to wait on for all of
  them (an epoll set of their sockets). A queue whose answer is in is claimed again at
  the next :meth:`~ClusterClaim.send` while the others keep waiting, so each queue may
  have up to ``count`` entries coming (held entries are bounded by queues x count).
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from taskq.broker.blocking import BlockingRead
from taskq.broker.connection import connection_pool
from taskq.broker.keys import GROUP
from taskq.message import Entry


class Claimer(Protocol):
    """At most one claim at a time for one consumer on a fixed list of streams."""

    @property
    def outstanding(self) -> bool:
        """Is any claim out (its answer still to be read)?"""

    @property
    def full(self) -> bool:
        """Is every claim it can have out (nothing more to :meth:`send`)?"""

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
        self._read = BlockingRead(
            connection_pool(pool, key=streams[0], socket_timeout=socket_timeout,
                            socket_connect_timeout=5.0) if isinstance(pool, str) else pool)
        self._streams = list(streams)
        self._index = {s.encode(): i for i, s in enumerate(self._streams)}
        self._consumer = consumer

    @property
    def outstanding(self) -> bool:
        return self._read.outstanding

    full = outstanding

    def waitable(self) -> socket.socket | None:
        """The socket to wait on while the claim is outstanding."""
        return self._read.waitable()

    def send(self, count: int, block: float | None) -> None:
        """Ask for up to ``count`` new entries; ``block`` seconds to wait (None: don't)."""
        args: list[Any] = ["XREADGROUP", "GROUP", GROUP, self._consumer, "COUNT", count]
        if block is not None:
            args += ["BLOCK", int(block * 1000)]
        args += ["STREAMS", *self._streams, *(">" for _ in self._streams)]
        self._read.send(*args)

    def ready(self) -> bool:
        """Has the answer arrived? (Raises if the server hung up.)"""
        return self._read.ready()

    def read(self) -> dict[int, list[Entry]]:
        """The answer, by stream index; empty when the claim found nothing."""
        return _entries(self._read.read(), self._index)

    def drop(self) -> None:
        """Abandon the outstanding claim; anything it delivered stays pending under this
        consumer and is handed back or reclaimed, never lost."""
        self._read.drop()

    def close(self) -> None:
        self._read.close()


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

    full = outstanding

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


class ClusterClaim:
    """One blocking :class:`Claim` per queue, each on its queue's master (Redis Cluster),
    waited on together: :meth:`waitable` is an epoll set of the outstanding sockets."""

    def __init__(self, url: str, streams: Sequence[str], consumer: str,
                 *, socket_timeout: float = 10.0) -> None:
        self._claims = [Claim(url, [s], consumer, socket_timeout=socket_timeout)
                        for s in streams]
        self._epoll = select.epoll()
        self._watched: dict[int, int] = {}  # claim index -> registered fd

    @property
    def outstanding(self) -> bool:
        return any(c.outstanding for c in self._claims)

    @property
    def full(self) -> bool:
        return all(c.outstanding for c in self._claims)

    def send(self, count: int, block: float | None) -> None:
        """Claim again on every queue whose previous answer was read."""
        for i, claim in enumerate(self._claims):
            if not claim.outstanding:
                claim.send(count, block)
                sock = claim.waitable()
                if sock is not None:
                    self._watch(i, sock.fileno())

    def waitable(self) -> select.epoll:
        return self._epoll

    def ready(self) -> bool:
        return any(c.ready() for c in self._claims)

    def read(self) -> dict[int, list[Entry]]:
        """The answers that are in, by queue index; the other claims stay out."""
        out: dict[int, list[Entry]] = {}
        for i, claim in enumerate(self._claims):
            if claim.ready():
                self._unwatch(i)
                try:
                    got = claim.read().get(0)
                except BaseException:
                    self.drop()  # the loop backs off; every queue is claimed afresh
                    raise
                if got:
                    out[i] = got
        return out

    def _watch(self, i: int, fd: int) -> None:
        self._unwatch(i)
        self._epoll.register(fd, select.EPOLLIN)
        self._watched[i] = fd

    def _unwatch(self, i: int) -> None:
        fd = self._watched.pop(i, None)
        if fd is not None:
            with contextlib.suppress(OSError):  # already closed (a dropped connection)
                self._epoll.unregister(fd)

    def drop(self) -> None:
        for i, claim in enumerate(self._claims):
            self._unwatch(i)
            claim.drop()

    def close(self) -> None:
        self.drop()
        for claim in self._claims:
            claim.close()
        self._epoll.close()
