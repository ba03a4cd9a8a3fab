"""Redis going away, as the node loop sees it: which errors mean "back off and try again"
(an outage, an unwell server, a queue that vanished) and how long to back off.
"""

from __future__ import annotations

import redis

from taskq.broker import REDIS_DOWN
from taskq.errors import BrokerError

DOWN = (*REDIS_DOWN, BrokerError)
"""What a Redis that went away raises."""
_UNWELL = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
           redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
"""Error replies of a server that cannot serve us right now: back off as if it were down
(so do MISCONF, a failing disk, and the same errors raised inside a script)."""
_UNWELL_CODES = ("MISCONF", "READONLY", "OOM", "TRYAGAIN")


def outage(exc: BaseException) -> str | None:
    """``"down"`` (back off and retry), ``"nogroup"`` (the stream vanished, as when Redis
    restarted empty: recreate it) or None (a real error: let it propagate)."""
    if isinstance(exc, DOWN):
        return "down"
    if not isinstance(exc, redis.ResponseError):
        return None
    text = str(exc)
    if "NOGROUP" in text:
        return "nogroup"
    if isinstance(exc, _UNWELL) or any(code in text for code in _UNWELL_CODES):
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
