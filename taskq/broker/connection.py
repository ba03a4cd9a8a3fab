"""Connections: the one place a Redis URL becomes a client, and an outage a one-line error
(URLs in messages always go through :func:`taskq.config.redact_url`).

``redis+cluster://`` URLs give a :class:`redis.cluster.RedisCluster`, ``redis+sentinel://``
ones the master client of a :class:`redis.sentinel.Sentinel` (both parsed by
:func:`taskq.config.parse_target`). Every client has a socket timeout and TCP keepalive:
a master that vanishes without closing its sockets (a host gone, a partition) is
noticed, instead of a read that waits forever (a known stall of Sentinel clients). A
Sentinel client also asks the Sentinels where the master is at least once a second
(:class:`FollowingPool`): after a ``SENTINEL FAILOVER`` the old master keeps accepting
writes on the connections it has until Sentinel demotes it, seconds later, and whatever
it takes meanwhile is lost when it resyncs from the new master.
"""

from __future__ import annotations

import functools
import time
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from taskq.config import CLUSTER_SCHEMES, SENTINEL_SCHEMES, Target, parse_target, redact_url, validate_url
from taskq.errors import BrokerError, ConfigError

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""What a Redis that went away raises."""

_DEFAULTS = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0, "socket_keepalive": True}
"""Always set: no read waits forever on a master that vanished silently."""


def _driver_info() -> dict[str, Any]:
    """The ``driver_info`` of a single server's connections: the same CLIENT SETINFO as
    redis-py's default, with its version given once. By default every new connection
    looks redis-py's version up in the installed packages' metadata (~1 ms a
    connection, ~3 ms the first: a node opens three before its first claim).
    Empty on redis-py < 7.2, which has no DriverInfo (and does the same lookup)."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


_DRIVER = _driver_info()


def _single_server(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**_DRIVER, **kwargs}


def _timeouts(url: str, kwargs: dict[str, Any]) -> None:
    for name, value in _DEFAULTS.items():
        if not (name == "socket_keepalive" and url.startswith("unix:")):  # not for a socket file
            kwargs.setdefault(name, value)


def target_of(url: str) -> Target | None:
    """The parsed cluster / Sentinel URL, or None for a single server's URL."""
    scheme = url.partition("://")[0]
    return parse_target(url) if scheme in (*CLUSTER_SCHEMES, *SENTINEL_SCHEMES) else None


def connect(url: str, *, retries: bool = True, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; an unparseable URL is a :class:`ConfigError`.

    ``retries=False``: no hidden client-side retries, for loops that must see every
    lost connection and back off by themselves (a retrying command would stall them).
    A cluster client is typed as a ``redis.Redis``: taskq calls only commands both have.
    """
    validate_url(url)
    _timeouts(url, kwargs)
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    target = target_of(url)
    if target is not None:
        return _connect_target(url, target, kwargs)
    try:
        return redis.Redis.from_url(url, **_single_server(kwargs))
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None


def _connect_target(url: str, target: Target, kwargs: dict[str, Any]) -> redis.Redis:
    options = {**target.options, **kwargs}
    if target.kind == "sentinel":
        return cast(redis.Redis, _sentinel(target, options).master_for(  # type: ignore[no-untyped-call]
            cast(str, target.master), db=target.db, username=target.username,
            password=target.password, ssl=target.ssl, connection_pool_class=FollowingPool,
            **options))
    try:
        return cast(redis.Redis, RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],  # type: ignore[no-untyped-call]
            username=target.username, password=target.password, ssl=target.ssl, **options))
    except (RedisClusterException, redis.RedisError) as exc:
        raise unreachable(url, exc) from None


class FollowingPool(SentinelConnectionPool):
    """A Sentinel master pool that follows a failover at once: at most every
    :attr:`CHECK_EVERY` seconds, handing out a connection asks the Sentinels for the
    master's address, and when it moved every connection is dropped, in-use ones too (a
    blocked claim or BLPOP then fails as an outage and reconnects to the new master).
    redis-py's own pool only re-asks when it opens a connection, so a busy client keeps
    writing to the demoted master's connections."""

    CHECK_EVERY = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._checked = time.monotonic()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY:
            self._checked = now
            old = self.master_address
            try:
                new = self.get_master_address()  # type: ignore[no-untyped-call]
            except (MasterNotFoundError, redis.RedisError):
                new = old  # no Sentinel answers now: the connection attempt will tell
            if old is not None and new != old:
                self.disconnect(inuse_connections=True)
        return super().get_connection(*args, **kwargs)


def _sentinel(target: Target, options: dict[str, Any]) -> Sentinel:
    timeouts: dict[str, Any] = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout",
                                          "socket_keepalive") if k in options}
    sentinel_kwargs: dict[str, Any] = {**timeouts, "ssl": target.ssl}
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    return Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs,  # type: ignore[no-untyped-call]
                    **timeouts)


@functools.lru_cache(maxsize=16)
def _cluster_for_pools(url: str) -> RedisCluster:
    """One cluster client per URL whose only use is to find the master of a slot."""
    return cast(RedisCluster, connect(url, retries=False, socket_timeout=5.0))


def connection_pool(url: str, key: str | None = None, **kwargs: Any) -> redis.ConnectionPool:
    """A pool of raw connections without client-side retries (for the node's claim and
    control stream). Cluster URLs need the ``key`` the connections read: they go to that
    slot's master (and follow it after a failover, :class:`~taskq.broker.cluster.SlotPool`);
    Sentinel URLs give connections to the current master."""
    validate_url(url)
    _timeouts(url, kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    target = target_of(url)
    if target is not None and target.kind == "sentinel":
        return _connect_target(url, target, kwargs).connection_pool
    if target is not None:
        from taskq.broker.cluster import SlotPool

        if key is None:
            raise ValueError("a cluster connection pool needs the key it serves")
        options: dict[str, Any] = {**target.options, **kwargs}
        if target.username is not None:
            options["username"] = target.username
        if target.password is not None:
            options["password"] = target.password
        if target.ssl:
            options["connection_class"] = redis.SSLConnection
        return SlotPool(_cluster_for_pools(url), key, **options)
    try:
        return redis.ConnectionPool.from_url(url, **_single_server(kwargs))
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None


def unreachable(url: str, exc: Exception) -> BrokerError:
    """The one-line error for a Redis that cannot be reached (its password masked)."""
    return BrokerError(f"cannot reach Redis at {redact_url(url)}: {exc}")
