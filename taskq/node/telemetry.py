"""What a node tells about itself, in one place the loop calls: its metrics (counted only
with ``settings.metrics``), the /metrics + /healthz server process, and the extra fields
of its heartbeat (the pool's process table).

The loop's hot path reads :attr:`Telemetry.metrics` directly (None when off) and does a
few plain increments; everything else here runs once per loop turn or per housekeeping
round. ``prometheus_client`` is imported only when metrics are on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis

from taskq.node.exits import procs_table
from taskq.node.holdings import Holdings, OnReported
from taskq.node.pool import SupervisedPool

if TYPE_CHECKING:
    from taskq.node.health import HealthServer
    from taskq.node.metrics import Exposition, NodeMetrics


class Telemetry:
    def __init__(self, queues: Sequence[str], address: tuple[str, int] | None) -> None:
        self.address = address
        self.metrics: NodeMetrics | None = None
        self.health: HealthServer | None = None  # once serving
        self._exposition: Exposition | None = None
        if address is not None:
            from taskq.node.metrics import NodeMetrics

            self.metrics = NodeMetrics(queues)

    @property
    def on_reported(self) -> OnReported | None:
        return None if self.metrics is None else self.metrics.reported

    def attach(self, holdings: Holdings, pool: SupervisedPool) -> None:
        """What the scrape reads besides the counters (after both exist)."""
        if self.metrics is not None:
            from taskq.node.metrics import Exposition

            self._exposition = Exposition(self.metrics, holdings, pool)

    def serve(self, lease: float) -> None:
        """Start the HTTP server process, if asked; before the pool, so that it holds none
        of the pool's pipes."""
        if self.address is not None and self.health is None:
            from taskq.node.health import HealthServer

            self.health = HealthServer(*self.address, lease=lease)

    def render(self) -> bytes:
        """The /metrics text (metrics must be on: ``settings.metrics``)."""
        if self._exposition is None:
            raise RuntimeError("metrics are off: set Settings.metrics (--metrics [HOST:]PORT)")
        return self._exposition.render()

    # -- once per loop turn ------------------------------------------------------------

    def beat(self, now: float) -> None:
        if self.health is not None:
            self.health.beat(now)

    def waitables(self) -> list[Any]:
        h = self.health
        return [] if h is None or h.conn is None else [h.conn]

    def answer(self) -> None:
        """Answer a waiting scrape (a non-blocking poll of the pipe when none waits)."""
        h = self.health
        if h is not None and h.conn is not None and self._exposition is not None:
            h.answer(self._exposition.render)

    # -- housekeeping ------------------------------------------------------------------

    def call(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One Redis exchange: timed and its failures counted when metrics are on."""
        m = self.metrics
        return fn(*args) if m is None else m.timed(op, fn, *args)

    def renewed(self) -> None:
        if self.health is not None:
            self.health.renewed(time.monotonic())

    def heartbeat_fields(self, client: redis.Redis, pool: SupervisedPool) -> dict[str, str]:
        pool.sample_rss()  # also what tells an OOM kill from another SIGKILL
        if self.metrics is not None:  # Redis's clock, for queue wait times: not per task
            sec, usec = client.time()
            self.metrics.clock_offset_ms = sec * 1000 + usec / 1000 - time.time() * 1000
        return {"procs_table": procs_table(pool.processes()).decode()}

    def close(self) -> None:
        if self.health is not None:
            self.health.close()
