"""Delayed work: apply(delay=/eta=), submit_many(delay=), taskq enqueue --delay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis as redis_lib

import taskq
from taskq.cli import parse_duration
from taskq.client import Client
from taskq.client.calls import CallOptions
from taskq.errors import ConfigError

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
sys.path.insert(0, str(TESTS))
import schedule_tasks  # noqa: E402


def test_durations_parse_and_bad_ones_are_config_errors() -> None:
    assert [parse_duration("--delay", t) for t in ("90", "30s", "5m", "1h", "1.5m", "0")] \
        == [90.0, 30.0, 300.0, 3600.0, 90.0, 0.0]
    for bad in ("", "x", "5y", "-1", "nan", "1e400", "m"):
        with pytest.raises(ConfigError, match="--delay"):
            parse_duration("--delay", bad)


def test_eta_naive_is_utc_and_options_are_checked() -> None:
    now = time.time()
    naive = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=60)
    due = CallOptions(eta=naive).due(now)
    assert due is not None and abs(due - (now + 60)) < 1
    aware = datetime.now(timezone(timedelta(hours=5))) + timedelta(seconds=30)
    due = CallOptions(eta=aware).due(now)
    assert due is not None and abs(due - (now + 30)) < 1
    assert CallOptions(eta=naive - timedelta(seconds=3600)).due(now) is None  # past: now
    assert CallOptions(delay=0).due(now) is None
    with pytest.raises(TypeError):
        CallOptions(delay=1, eta=naive)
    with pytest.raises(TypeError):
        CallOptions(eta="tomorrow")  # type: ignore[arg-type]
    for bad in (-1, float("nan"), True, "5"):
        with pytest.raises(ValueError):
            CallOptions(delay=bad)  # type: ignore[arg-type]


def test_a_delayed_task_waits_in_the_delayed_set_until_due(
        client: Client, redis: redis_lib.Redis) -> None:
    fut = client.apply(schedule_tasks.stamp, ["later"], delay=60)
    keys = client.broker.keys
    assert redis.xlen(keys.stream) == 0
    ((member, score),) = redis.zrange(keys.delayed, 0, -1, withscores=True)
    assert abs(score - (time.time() + 60) * 1000) < 2000
    assert member.startswith(b"1|") and fut.task_id.encode() in member  # type: ignore[attr-defined]
    assert int(redis.hget(keys.stats, "enqueued")) == 1  # counted at the apply
    assert client.broker.promote() == 0  # not due yet
    redis.zadd(keys.delayed, {member: 0})  # make it due
    assert client.broker.promote() == 1
    assert redis.xlen(keys.stream) == 1 and not fut.done()


def test_delayed_batches_and_zero_delay(client: Client, redis: redis_lib.Redis) -> None:
    futures, batch = client.submit_many(schedule_tasks.stamp, [["a"], ["b"]], batch=True,
                                        delay=30)
    assert batch is not None and batch.status().total == 2 and len(futures) == 2
    assert redis.zcard(client.broker.keys.delayed) == 2
    client.apply(schedule_tasks.stamp, ["now"], delay=0)  # straight to the stream
    assert client.flush(timeout=10)
    assert redis.xlen(client.broker.keys.stream) == 1


@pytest.fixture
def worker(redis_url: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "1",
         "--import", "schedule_tasks"], env=ENV, stderr=subprocess.DEVNULL, text=True)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


@pytest.mark.timeout(60)
def test_a_delay_is_honoured_within_a_few_hundred_ms(
        redis_url: str, worker: subprocess.Popen[str]) -> None:
    with taskq.Client(redis_url) as client:
        assert client.submit(schedule_tasks.stamp, "warm").result(timeout=30)  # node is up
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        sent = time.time()
        by_delay = client.apply(schedule_tasks.stamp, ["d"], delay=1.0)
        by_eta = client.apply(schedule_tasks.stamp, ["e"], eta=eta)
        started, _ = by_delay.result(timeout=20)
        assert sent + 1.0 <= started < sent + 1.0 + 0.5
        started, _ = by_eta.result(timeout=20)
        assert eta.timestamp() <= started < eta.timestamp() + 0.5


@pytest.mark.timeout(60)
def test_cli_enqueue_delay(redis_url: str, worker: subprocess.Popen[str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "enqueue",
                               *args, "--import", "schedule_tasks"], env=ENV,
                              capture_output=True, text=True, timeout=40)

    bad = cli("tests.sched.stamp", "x", "--delay", "soon")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--delay" in bad.stderr and "Traceback" not in bad.stderr
    sent = time.time()
    done = cli("tests.sched.stamp", "x", "--delay", "1s")
    assert done.returncode == 0, done.stderr
    started, tag = __import__("json").loads(done.stdout)
    assert tag == "x" and started >= sent + 1.0
