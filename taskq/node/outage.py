"""Redis going away, as the node loop sees it: which errors mean "back off and try again"
(an outage, an unwell server, a failover, a queue that vanished) and how long to back off.
"""

from __future__ import annotations

import redis

from taskq.broker import REDIS_DOWN
from taskq.broker.cluster import transient
from taskq.errors import BrokerError

DOWN = (*REDIS_DOWN, BrokerError)
"""What a Redis that went away raises."""


def outage(exc: BaseException) -> str | None:
    """``"down"`` (back off and retry), ``"nogroup"`` (the stream vanished, as when Redis
    restarted empty: recreate it) or None (a real error: let it propagate).

    Down: Redis away, an unwell server (``OOM``, ``MISCONF``) and every sign of a
    failover (:func:`taskq.broker.cluster.transient`: ``MOVED``/``ASK``, ``TRYAGAIN``,
    ``CLUSTERDOWN``, ``READONLY``, "previous master is now a slave", ``UNBLOCKED`` …),
    raised by a command or inside a script."""
    if isinstance(exc, DOWN):
        return "down"
    if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
        return "nogroup"
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or transient(exc):
        return "down"
    if isinstance(exc, redis.ResponseError) and "OOM" in str(exc):
        return "down"
    return None


class Backoff:
    """Delays between reconnection attempts while Redis is away, doubling from ``low``
    to ``high``: short next to a lease, so a node is back soon after Redis is."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.delay = low
        self.until = 0.0
        self.down_since: float | None = None
        """When the first failed attempt of the current outage was (None: no outage)."""

    def failed(self, now: float) -> float:
        """Redis is away: wait the current delay before the next attempt (returned)."""
        if self.down_since is None:
            self.down_since = now
        delay = self.delay
        self.until = now + delay
        self.delay = min(delay * 2, self.high)
        return delay

    def waiting(self, now: float) -> bool:
        return now < self.until

    @property
    def after_outage(self) -> bool:
        """Has an attempt failed since the last :meth:`succeeded`?"""
        return self.delay > self.low

    def succeeded(self, now: float | None = None) -> float | None:
        """An attempt worked: how long Redis was away, if it just came back (else None)."""
        self.delay = self.low
        since, self.down_since = self.down_since, None
        return None if since is None or now is None else now - since
