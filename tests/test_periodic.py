"""Periodic tasks: schedules, the leased scheduler, and exact runs across a failover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib

import taskq
from taskq.errors import ConfigError
from taskq.node.scheduler import Scheduler
from taskq.periodic import Schedule, schedules, unschedule

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
sys.path.insert(0, str(TESTS))
import schedule_tasks  # noqa: E402


def test_schedules_register_and_bad_ones_are_refused() -> None:
    @taskq.periodic("*/5 * * * *", queue="reports", args=[3])
    def every_five(n: int) -> int:
        return n

    try:
        (sched,) = [s for s in schedules() if s.task.endswith("every_five")]
        assert (sched.cron, sched.queue, sched.args) == ("*/5 * * * *", "reports", (3,))
        assert every_five(2) == 2  # still a plain function, now a registered task
    finally:
        unschedule(sched.name)
    with pytest.raises(ConfigError, match="cron"):
        taskq.schedule(schedule_tasks.stamp, "every day")
    with pytest.raises(TypeError):
        taskq.schedule(schedule_tasks.stamp, "* * * * *", args=[(1, 2)])  # not JSON-faithful
    with pytest.raises(TypeError):
        taskq.schedule(schedule_tasks.stamp, "* * * * *", args=[1, 2, 3])  # bad signature


def test_cron_times_with_seconds() -> None:
    s = Schedule("s", "t", "* * * * * */2")
    assert s.runs(10_000, 16_500, 100) == [12_000, 14_000, 16_000]
    assert s.runs(10_000, 16_500, 2) == [12_000, 14_000]
    assert s.last_at_or_before(13_999) == 12_000 and s.last_at_or_before(14_000) == 14_000


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def tick(s: Scheduler) -> None:
    s._next_tick = 0.0
    for state in s.queues.values():
        state.next_hold = 0.0
    s.tick()


def run_ids(redis: redis_lib.Redis) -> list[str]:
    rows: Any = redis.xrange("taskq:{default}:stream")
    return [orjson.loads(f[b"m"])["id"] for _, f in rows]


def test_one_holder_queues_each_run_once_and_a_standby_continues_exactly(
        redis: redis_lib.Redis) -> None:
    sched = Schedule("every2", "tests.sched.stamp", "* * * * * */2", ("p",))
    clock = Clock(1_000_000.5)
    a = Scheduler(redis, "node-a", [sched], "default", lease=60, clock=clock)
    b = Scheduler(redis, "node-b", [sched], "default", lease=60, clock=clock)
    tick(a)
    tick(b)
    assert a.holding == ["default"] and b.holding == []
    assert run_ids(redis) == []  # first sight: the first run is the next after now
    clock.t += 4  # runs at ...02 and ...04
    tick(a)
    tick(b)
    assert run_ids(redis) == ["periodic:every2:1000002000", "periodic:every2:1000004000"]
    # node-a dies (its lease expires unrenewed); 6 s later node-b takes over and queues
    # the runs nobody queued meanwhile, each once.
    redis.delete("taskq:{default}:sched:lock")
    clock.t += 6
    tick(b)
    assert b.holding == ["default"]
    ids = run_ids(redis)
    assert ids[2:] == [f"periodic:every2:{t}000" for t in (1000006, 1000008, 1000010)]
    # node-a comes back from a long pause still believing it holds the lease: fenced.
    clock.t += 2
    a.queues["default"].held, a.queues["default"].next_hold = True, float("inf")
    a._next_tick = 0.0
    a.tick()
    assert a.holding == [] and run_ids(redis) == ids  # nothing queued by the old holder
    tick(b)
    assert run_ids(redis)[-1] == "periodic:every2:1000012000" and len(run_ids(redis)) == 6
    assert int(redis.hget("taskq:{default}:stats", "enqueued")) == 6
    b.close()
    assert not redis.exists("taskq:{default}:sched:lock")


def _node(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "1",
         "--import", "schedule_tasks"], env={**ENV, "TASKQ_TEST_PERIODIC": "1"},
        stderr=subprocess.DEVNULL, start_new_session=True)


def _holder_pid(r: redis_lib.Redis, timeout: float, other_than: int = 0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = r.get("taskq:{default}:sched:lock")
        if holder and int(holder.split(b":")[1]) != other_than:  # ids: host:pid:random
            return int(holder.split(b":")[1])
        time.sleep(0.1)
    raise AssertionError("no node took the scheduler lease")


@pytest.fixture
def nodes(redis_url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [_node(redis_url), _node(redis_url)]
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the node and its pool: a group we started
        p.wait(timeout=10)


@pytest.mark.timeout(90)
def test_a_per_second_schedule_runs_once_per_second_across_a_scheduler_kill(
        redis_url: str, nodes: list[subprocess.Popen[bytes]]) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    holder = _holder_pid(r, 30)
    time.sleep(3)  # a few runs under the first holder
    victim = next(p for p in nodes if p.pid == holder)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    standby = next(p for p in nodes if p is not victim)
    assert _holder_pid(r, 15, other_than=holder) == standby.pid  # the standby took the lease over
    time.sleep(3)  # and went on
    last = int(r.hget("taskq:{default}:sched:last", "tick"))
    expected = [f"periodic:tick:{t}" for t in range(last - 8000, last + 1, 1000)]
    deadline = time.monotonic() + 20  # the runs queued last finish
    while time.monotonic() < deadline:
        done = [r.exists(f"taskq:{{default}}:result:{i}") for i in expected]
        if all(done):
            break
        time.sleep(0.2)
    assert all(done), [i for i, d in zip(expected, done, strict=True) if not d]
    starts = sorted(int(k.split(b":")[-1]) for k in
                    r.scan_iter(match="taskq:{default}:result:periodic:tick:*", count=1000))
    assert starts == list(range(starts[0], starts[-1] + 1000, 1000))  # none missed
    enqueued = int(r.hget("taskq:{default}:stats", "enqueued"))
    assert enqueued == len(starts)  # none doubled: one enqueue per scheduled second
