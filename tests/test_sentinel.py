"""Redis Sentinel: a node and a producer ride out ``SENTINEL FAILOVER`` mid-run.

Against a real master + replica + Sentinel set (the session fixture ``sentinel``),
counted like the chaos test: every future resolves with the right value, the node does
not exit, duplicates (completions beyond the tasks) bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_cluster import run_through_failover, start_worker  # noqa: F401 (a fixture)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sentinel_failover_mid_run_loses_nothing(sentinel: Any, sentinel_url: str,
                                                 start_worker: Any) -> None:  # noqa: F811
    old = sentinel.master()
    worker = start_worker(sentinel_url, ["default"])
    new: list[int] = []
    n = 3000
    right, wrong, lost, unresolved, dups = run_through_failover(
        sentinel_url, "default", lambda: new.append(sentinel.failover()), n)
    print(f"SENTINEL FAILOVER: {n} tasks, right {right}, wrong {wrong}, lost {lost}, "
          f"unresolved {unresolved}, duplicate completions {dups}")
    assert new and new[0] != old  # it did fail over
    assert (right, wrong, lost, unresolved) == (n, 0, 0, 0)
    assert dups <= 2 * 256
    assert worker.poll() is None, "the node exited"
