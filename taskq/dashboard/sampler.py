"""The one sampler of a dashboard process: every second one :func:`taskq.broker.snapshot.take`,
kept with 15 minutes of throughput history and pushed, serialised once, to every open
page (server-sent events). Ten open browsers cost Redis no more than one.

The exporter uses the same class on demand (:meth:`Sampler.fresh`): no background loop,
one snapshot per scrape at most every ``interval`` seconds however many scrapers ask.

Sampling runs the broker's blocking calls in a worker thread, so the event loop keeps
serving pages while Redis is slow; a failed sample keeps the last good one and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import deque
from typing import Any

import orjson
import redis

from taskq.broker import snapshot
from taskq.broker.snapshot import Snapshot

log = logging.getLogger("taskq.dashboard")

WINDOW = 15 * 60.0
"""Seconds of throughput history the sparklines cover."""
SPARK_POINTS = 90
"""Points per sparkline (10 s each over the 15 minutes at the default interval)."""
HEALTHY_AFTER = 5.0
"""A sampler whose last good sample is older than this (s, or 3 intervals) is unhealthy."""


class Sampler:
    """Samples Redis and fans the result out to subscribers (asyncio queues)."""

    def __init__(self, client: redis.Redis, interval: float = 1.0, window: float = WINDOW) -> None:
        self.client = client
        self.interval = interval
        self.latest: Snapshot | None = None
        self.error: str | None = None
        self.last_ok = float("-inf")  # monotonic time of the last good sample
        self.message: bytes = b""
        """The latest view, serialised once for every subscriber."""
        self._history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(
            maxlen=int(window / interval) + 1)
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()

    # -- sampling ---------------------------------------------------------------------

    async def sample(self) -> None:
        """One snapshot (in a thread), then publish it; a Redis error is kept, not raised."""
        try:
            snap = await asyncio.to_thread(snapshot.take, self.client)
        except redis.RedisError as exc:
            if self.error is None:
                log.warning("cannot sample Redis: %s", exc)
            self.error = f"cannot reach Redis: {exc}"
        else:
            self.latest, self.error, self.last_ok = snap, None, time.monotonic()
            self._history.append((snap.time, {q.name: (q.counters.get("done", 0),
                                                       q.counters.get("failed", 0))
                                              for q in snap.queues}))
        self._publish()

    async def fresh(self) -> Snapshot | None:
        """A snapshot at most ``interval`` old, sampling now if needed (one at a time)."""
        async with self._lock:
            if time.monotonic() - self.last_ok >= self.interval:
                await self.sample()
        return self.latest if self.error is None else None

    async def run(self) -> None:
        """Sample every ``interval`` seconds until :meth:`stop`."""
        while not self._stopped.is_set():
            started = time.monotonic()
            async with self._lock:
                await self.sample()
            delay = max(0.05, self.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)

    def stop(self) -> None:
        """End the loop and every open event stream."""
        self._stopped.set()
        for q in self._subscribers:
            _offer(q, None)

    def healthy(self) -> bool:
        return time.monotonic() - self.last_ok < max(HEALTHY_AFTER, 3 * self.interval)

    # -- fan-out --------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        """A queue that receives every new view (only the newest, if a page is slow)."""
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        if self._stopped.is_set():
            q.put_nowait(None)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes | None]) -> None:
        self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _publish(self) -> None:
        self.message = orjson.dumps(self.view())
        for q in self._subscribers:
            _offer(q, self.message)

    # -- the view -------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What the pages render: the snapshot, each queue's throughput, any error."""
        snap = self.latest
        if snap is None:
            return {"time": time.time(), "queues": [], "nodes": [], "nodes_live": 0,
                    "truncated": False, "error": self.error or "no sample yet"}
        queues = []
        for q in snap.queues:
            done, failed = self.rates(q.name)
            queues.append({**dataclasses.asdict(q), "done_rate": done, "failed_rate": failed})
        return {"time": snap.time, "queues": queues,
                "nodes": [dataclasses.asdict(n) for n in snap.nodes],
                "nodes_live": snap.nodes_live, "truncated": snap.truncated, "error": self.error}

    def rates(self, queue: str, points: int = SPARK_POINTS) -> tuple[list[float], list[float]]:
        """Done and failed per second over the history, as up to ``points`` values (oldest
        first); a counter that went down (stats reset) counts as 0."""
        history = [(t, c[queue]) for t, c in self._history if queue in c]
        if len(history) < 2:
            return [], []
        step = max(1, (self._history.maxlen or 1) // points)
        picked = history[::-1][::step][::-1]  # every step-th sample, ending at the newest
        done, failed = [], []
        for (t0, (d0, f0)), (t1, (d1, f1)) in itertools.pairwise(picked):
            dt = max(t1 - t0, 1e-3)
            done.append(round(max(0, d1 - d0) / dt, 3))
            failed.append(round(max(0, f1 - f0) / dt, 3))
        return done[-points:], failed[-points:]


def _offer(q: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Put ``item``, dropping what a slow reader has not taken yet: only the newest counts."""
    with contextlib.suppress(asyncio.QueueEmpty):
        if q.full():
            q.get_nowait()
    with contextlib.suppress(asyncio.QueueFull):
        q.put_nowait(item)
