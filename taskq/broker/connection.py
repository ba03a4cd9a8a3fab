"""Connections: the one place a Redis URL becomes a client, and an outage a one-line error
(URLs in messages always go through :func:`taskq.config.redact_url`)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskq.config import redact_url, validate_url
from taskq.errors import BrokerError, ConfigError

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
"""What a Redis that went away raises."""


def connect(url: str, *, retries: bool = True, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; an unparseable URL is a :class:`ConfigError`.

    ``retries=False``: no hidden client-side retries, for loops that must see every
    lost connection and back off by themselves (a retrying command would stall them).
    """
    validate_url(url)
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None


def connection_pool(url: str, **kwargs: Any) -> redis.ConnectionPool:
    """A pool of raw connections without client-side retries (for the node's claim)."""
    validate_url(url)
    try:
        return redis.ConnectionPool.from_url(url, retry=Retry(NoBackoff(), 0), **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None


def unreachable(url: str, exc: Exception) -> BrokerError:
    """The one-line error for a Redis that cannot be reached (its password masked)."""
    return BrokerError(f"cannot reach Redis at {redact_url(url)}: {exc}")
