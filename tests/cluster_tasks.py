"""Tasks the Redis Cluster / Sentinel tests' worker subprocesses import."""

from __future__ import annotations

import time

import taskq


@taskq.task(name="cluster.double")
def double(x: int, pause: float = 0.0) -> int:
    """``2 * x`` after ``pause`` seconds (keeps thousands of tasks in flight a while)."""
    if pause:
        time.sleep(pause)
    return 2 * x
