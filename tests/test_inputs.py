"""Hardening: bad input says exactly what is wrong, no future is ever lost.

Credentials are masked in every message; a URL redis-py would read differently is
refused; an unreachable or read-only Redis is one prompt error; a task Redis forgot
fails its future with TaskLostError; a node whose initializer fails hands back what it
claimed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import connect, unreachable
from taskq.client import Client
from taskq.client.watchdog import SENT
from taskq.config import Settings, redact_url, validate_url
from taskq.errors import BrokerError, ConfigError, TaskLostError
from taskq.outcome import encode_ok


@taskq.task(name="tests.inputs.add")
def add(a: int, b: int) -> int:
    return a + b


def failing_init() -> None:
    raise RuntimeError("the initializer cannot start")


# -- item 5: credentials are masked ------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://user:PASSWORD@10.0.0.1:6379/0", "redis://:PASSWORD@host/1",
    "rediss://PASSWORD@host", "redis://host/0?password=PASSWORD&db=1",
])
def test_redact_url_masks_the_password(url: str) -> None:
    shown = redact_url(url)
    assert "PASSWORD" not in shown and "***" in shown


def test_errors_about_a_url_never_show_its_password() -> None:
    err = unreachable("redis://admin:PASSWORD@127.0.0.1:1/0", OSError("refused"))
    assert "PASSWORD" not in str(err) and "admin:***@127.0.0.1:1" in str(err)
    with pytest.raises(ConfigError) as bad:
        connect("redis://admin:PASSWORD@host/notanumber")
    assert "PASSWORD" not in str(bad.value)


# -- item 14: a URL that does not say what redis-py would do is refused -------------------


@pytest.mark.parametrize("url", [
    "redis://host/abc", "redis://host/1/2", "redis://host:99999/0", "redis://host:port/0",
    "redis://host/0?foo=1", "redis://host/0?db=x", "redis://host/0#1", "unix://",
    "http://host:6379/0", "redis://host/0?socket_timeout=soon",
])
def test_an_invalid_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        validate_url(url)
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        Settings(url=url)


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "redis://h", "redis://h/", "rediss://:pw@h:1/2?ssl_cert_reqs=none",
    "unix:///tmp/redis.sock?db=3", "redis://u:p@h:6380/15?socket_timeout=2.5",
])
def test_valid_urls_pass(url: str) -> None:
    assert validate_url(url) == url


# -- item 20: an unreachable or read-only Redis is one prompt line ------------------------


def test_an_unreachable_redis_fails_the_first_call_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskq")
    with Client("redis://app:PASSWORD@127.0.0.1:1/0") as client:  # nothing listens on port 1
        started = time.monotonic()
        with pytest.raises(BrokerError, match="cannot reach Redis at redis://app:\\*\\*\\*@") as err:
            client.submit(add, 1, 2)
        assert time.monotonic() - started < 5
        assert "PASSWORD" not in str(err.value)
    assert [r.getMessage() for r in caplog.records] == []  # no retry chatter, no traceback


def test_a_read_only_user_is_one_line_not_a_thread_traceback(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    admin = redis_lib.Redis.from_url(redis_url)
    admin.acl_setuser("taskq-ro", enabled=True, passwords=["+ro-pass"], keys=["*"],
                      commands=["+@read", "+ping", "+auth"])
    path = redis_url.split("://", 1)[1].split("?")[0]
    caplog.set_level(logging.WARNING, logger="taskq")
    try:
        with Client(f"unix://taskq-ro:ro-pass@{path}") as client, \
                pytest.raises(BrokerError, match=r"refuses taskq's writes.*no permissions"):
            client.submit(add, 1, 2)
    finally:
        admin.acl_deluser("taskq-ro")
    assert [r.getMessage() for r in caplog.records] == []


# -- item 9: a task Redis forgot fails with TaskLostError ---------------------------------


def test_a_task_redis_forgot_fails_with_task_lost_and_the_others_wait(redis_url: str) -> None:
    with Client(settings=Settings(url=redis_url, lease=1.0)) as client:
        lost, kept, done = (client.submit(add, 1, i) for i in range(3))
        assert client.flush(10)
        stream = client.broker.keys.stream
        r = client.redis
        r.xdel(stream, getattr(lost, SENT)[0])  # as after a restart without the data
        r.xdel(stream, getattr(done, SENT)[0])  # finished, but its reply was lost:
        r.set(client.broker.keys.result(done.task_id), encode_ok(done.task_id, 7))  # type: ignore[attr-defined]
        with pytest.raises(TaskLostError, match="gone from Redis"):
            lost.result(timeout=20)
        assert done.result(timeout=1) == 7  # read back from the stored outcome
        assert not kept.done()  # still queued: it waits for a node


def test_taskq_lost_error_is_exported_and_a_task_error() -> None:
    assert issubclass(taskq.TaskLostError, taskq.TaskError)


# -- item 22: a node whose initializer fails hands back what it claimed -------------------


def test_a_node_whose_init_fails_hands_back_its_claimed_task(redis_url: str) -> None:
    from taskq.node.node import Node
    from taskq.node.pool import PoolInitError

    settings = Settings(url=redis_url, procs=1, lease=30.0)
    with Client(settings=settings) as client:
        fut = client.submit(add, 2, 3)
        assert client.flush(10)
        node = Node(settings, imports=("test_inputs",), init="test_inputs:failing_init")
        with pytest.raises(PoolInitError, match="initializer failed"):
            node.run()
        pending: Any = client.redis.xpending(client.broker.keys.stream, "workers")
        assert pending["pending"] == 0  # handed back, not left to wait out the 30 s lease
        assert client.redis.xlen(client.broker.keys.stream) == 1
        assert not fut.done()


# -- item 19: taskq info reads right --------------------------------------------------------


def _queue(name: str, **counters: int) -> Any:
    from taskq.broker.snapshot import QueueStats

    return QueueStats(name, depth=3, in_flight=1, lag=3, delayed=0, dead=counters.get("dead", 0),
                      oldest_age=2.0, counters=counters)


def _node(node_id: str, queues: list[str]) -> Any:
    from taskq.broker.snapshot import NodeInfo

    return NodeInfo(node_id, "host", 1, 2, queues, 0, 0, 0, heartbeat_age=4.0, procs_table=None)


def test_info_columns_hold_long_queue_names_and_failed_does_not_count_dead_again() -> None:
    from taskq.broker.snapshot import Snapshot
    from taskq.info import as_json, as_text, only_queues

    long_name = "reports-" + "x" * 60
    snap = Snapshot(100.0, [_queue("a", done=5, failed=7, dead=4), _queue(long_name, done=1)],
                    [_node("n1", ["a"]), _node("n2", [long_name])], 2)
    header, row_a, row_long = as_text(snap, {}).splitlines()[:3]
    assert len(header) == len(row_a) == len(row_long)  # the columns line up
    assert header.index("queued") + len("queued") == row_long.index(" 3") + 2
    cells = dict(zip(header.split(), row_a.split(), strict=False))
    assert (cells["done"], cells["failed"], cells["dead"]) == ("5", "3", "4")  # 7 - 4 dead
    assert as_json(snap, {})["queues"][0]["failed"] == 3
    only = only_queues(snap, [long_name])
    assert [q.name for q in only.queues] == [long_name]
    assert ([n.id for n in only.nodes], only.nodes_live) == (["n2"], 1)
    assert "heartbeat=4.0s" in as_text(only, {})


def test_a_node_silent_for_three_heartbeats_is_no_longer_live(redis: redis_lib.Redis) -> None:
    from taskq.broker import live_nodes, snapshot
    from taskq.broker.keys import NODES_KEY, node_key

    now_ms = int(time.time() * 1000)
    for node_id, age in (("fresh", 4.0), ("killed", 16.0)):  # 16 s: three missed beats
        redis.zadd(NODES_KEY, {node_id: now_ms - int(age * 1000)})
        redis.hset(node_key(node_id), mapping={"id": node_id, "procs": 1, "queues": "default"})
    assert [n["id"] for n in live_nodes(redis)] == ["fresh"]
    assert [n.id for n in snapshot.take(redis).nodes] == ["fresh"]


def test_info_queue_filter_on_the_cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from taskq.cli import main

    r = redis_lib.Redis.from_url(redis_url)
    r.sadd("taskq:queues", "alpha", "beta")
    with pytest.raises(SystemExit) as done:
        main(["info", "--interval", "0", "--queue", "beta", "--url", redis_url])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "beta" in out and "alpha" not in out
