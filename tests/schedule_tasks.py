"""Tasks for the delay / periodic / dedup tests (imported by worker subprocesses).

With TASKQ_TEST_PERIODIC set, importing this module also schedules ``tick`` every
second (the scheduler failover test starts its workers so)."""

from __future__ import annotations

import os
import time

import taskq


@taskq.task(name="tests.sched.stamp")
def stamp(tag: str = "") -> list[object]:
    """When it started (unix s), and the tag it got."""
    return [time.time(), tag]


@taskq.task(name="tests.sched.slow")
def slow(seconds: float, tag: str) -> str:
    time.sleep(seconds)
    return tag


if os.environ.get("TASKQ_TEST_PERIODIC"):
    taskq.schedule(stamp, "* * * * * *", args=["tick"], name="tick")
