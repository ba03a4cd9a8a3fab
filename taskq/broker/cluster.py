"""Redis Cluster and Sentinel specifics: which errors mean "a failover is in progress",
topology refresh, and a connection pool pinned to the master of one key's slot.

Everything taskq does on a queue stays inside the queue's hash tag ``{q}``, so in cluster
mode a queue lives on one master; the only cluster-specific work is to talk to the right
master and to ride out the moments it changes:

- :func:`transient` says which errors are an outage, not a bug: a lost connection, a slot
  that moved (``MOVED``/``ASK``), ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, a
  ``READONLY`` replica that used to be the master, Sentinel's "previous master is now a
  slave", ``UNBLOCKED`` (a blocked command force-unblocked by a role switch), ``LOADING``;
- :class:`SlotPool` is a plain connection pool for raw blocking reads (the node's claim
  and control stream) that follows its key's slot to whichever master owns it;
- :func:`slot_client` is a plain client on the master of a key's slot, for the one thing
  a cluster pipeline cannot do: a script and a ``WAIT`` on the same connection. Its
  pipelines follow a failover: a write the server refused whole (``MOVED``, ``ASK``,
  ``TRYAGAIN``, ``CLUSTERDOWN``, ``READONLY``: every command of a taskq write touches one
  slot, so nothing of it was applied) is sent again once on the slot's master after a
  topology refresh; a lost connection refreshes the map and is raised (whether the write
  was applied is unknown: the caller's outage handling decides).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

T = TypeVar("T")

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
    redis.exceptions.AskError, redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError, RedisClusterException,
)
"""Exception types that always mean "wait and try again" (a moved slot included:
``MovedError`` is an ``AskError``; ``SlotNotCoveredError`` a ``RedisClusterException``)."""
TRANSIENT_TEXTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY",
                   "UNBLOCKED", "LOADING", "previous master is now a slave",
                   "No master found", "MISCONF")
"""The same, as error text (replies raised inside a script, or by a raw connection
whose parser does not map them to their classes)."""
_NOT_TRANSIENT = (redis.exceptions.ClusterCrossSlotError, redis.exceptions.AuthenticationError,
                  redis.exceptions.AuthorizationError)


def transient(exc: BaseException) -> bool:
    """Is ``exc`` a failover or an outage (retry after a back-off), not a real error?"""
    if isinstance(exc, _NOT_TRANSIENT) or "CROSSSLOT" in str(exc):
        return False
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        return any(t in text for t in TRANSIENT_TEXTS)
    return False


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


_REFRESH_EVERY = 0.5
_refresh_lock = threading.Lock()
_refreshed: dict[int, float] = {}


def refresh(client: Any, *, force: bool = False) -> None:
    """Re-read the cluster's slot map (at most every half second per client, unless
    ``force``): after a failover a replica owns the slots of the master it replaced."""
    if not is_cluster(client):
        return
    now = time.monotonic()
    with _refresh_lock:
        if not force and now - _refreshed.get(id(client), 0.0) < _REFRESH_EVERY:
            return
        _refreshed[id(client)] = now
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        client.nodes_manager.initialize()  # if no node answers, the next attempt tries again


def slot_client(client: redis.Redis, key: str) -> redis.Redis:
    """``client`` itself for a single server or Sentinel; in cluster mode, a plain
    client of the master that owns ``key``'s slot (so a script and a ``WAIT`` share one
    connection in one pipeline: a cluster pipeline refuses scripts), whose pipelines
    follow a failover (:class:`_SlotPipeline`)."""
    if not is_cluster(client):
        return client
    cluster = cast(RedisCluster, client)
    node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
    conn = node.redis_connection or cluster.get_redis_connection(node)
    return _SlotClient(cluster, key, conn.connection_pool)


def follow_failover(client: Any, write: Callable[[], T], again: Callable[[], T]) -> T:
    """``write()`` to one slot's master, riding out a failover: a write the server
    refused whole (:data:`REFUSED`: nothing of it was applied) is sent once more with
    ``again()`` after a topology refresh; a lost connection refreshes the map and is
    raised (whether it was applied is unknown: the caller's outage handling decides).
    Off a cluster the refreshes are no-ops."""
    try:
        return write()
    except REFUSED:
        refresh(client, force=True)  # nothing was applied: send it again, once
        return again()
    except (redis.ConnectionError, redis.TimeoutError):
        refresh(client)  # the master may be gone: the next write asks the new map
        raise


REFUSED: tuple[type[BaseException], ...] = (
    redis.exceptions.AskError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError, redis.exceptions.ReadOnlyError)
"""Replies by which a server refuses a command without applying it (``MovedError`` is
an ``AskError``)."""


class _SlotClient(redis.Redis):
    """A plain client on one slot's master (its node's own pool) whose pipelines know
    the cluster and the key, to follow the slot when it moves."""

    def __init__(self, cluster: RedisCluster, key: str, pool: redis.ConnectionPool) -> None:
        super().__init__(connection_pool=pool)
        self._cluster, self._key = cluster, key

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _SlotPipeline(self._cluster, self._key, self.connection_pool,
                             self.response_callbacks, transaction, shard_hint)


class _SlotPipeline(Pipeline):
    """A pipeline on one slot's master that survives the slot moving (a failover)."""

    def __init__(self, cluster: RedisCluster, key: str, *args: Any) -> None:
        super().__init__(*args)
        self._cluster, self._key = cluster, key

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, scripts = list(self.command_stack), set(self.scripts)

        def again() -> list[Any]:
            pipe = slot_client(cast(redis.Redis, self._cluster), self._key).pipeline(
                transaction=self.transaction)
            pipe.command_stack, pipe.scripts = stack, scripts
            return Pipeline.execute(pipe, raise_on_error)

        return follow_failover(self._cluster, lambda: super(_SlotPipeline, self).execute(
            raise_on_error), again)


class SlotPool(redis.ConnectionPool):
    """Connections to the master that owns ``key``'s slot, for raw blocking reads.

    A connection handed back disconnected (the reader hit an error: a failover, a moved
    slot) marks the pool suspect: the next :meth:`get_connection` refreshes the slot map
    and, if the slot has a new master, forgets every connection to the old one."""

    def __init__(self, cluster: RedisCluster, key: str, **kwargs: Any) -> None:
        self._cluster, self._key = cluster, key
        self._suspect = False
        host, port = self._master()
        super().__init__(host=host, port=port, **kwargs)

    def _master(self) -> tuple[str, int]:
        node = self._cluster.get_node_from_key(self._key)  # type: ignore[no-untyped-call]
        return node.host, int(node.port)

    @property
    def address(self) -> tuple[str, int]:
        return self.connection_kwargs["host"], self.connection_kwargs["port"]

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._suspect:
            self._suspect = False
            refresh(self._cluster)
            try:
                address = self._master()
            except (redis.RedisError, RedisClusterException):
                address = self.address  # slot uncovered for now: try the old one again
            if address != self.address:
                self.disconnect()
                self.connection_kwargs.update(host=address[0], port=address[1])
                self.reset()  # connections to the old master are never handed out again
        return super().get_connection(*args, **kwargs)

    def release(self, connection: Any) -> None:
        if getattr(connection, "_sock", None) is None:
            self._suspect = True
        super().release(connection)
