"""Deduplication: apply(dedup_key=, dedup_ttl=) collapses applies onto one task."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import GROUP
from taskq.broker.keys import dedup_key_of, dedup_task_id
from taskq.client import Client
from taskq.config import Settings
from taskq.message import Entry
from taskq.node import runner

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
sys.path.insert(0, str(TESTS))
import schedule_tasks  # noqa: E402


def run_all(client: Client) -> int:
    """Claim and run everything queued, in process, reporting with complete.lua."""
    client.broker.ensure_group()
    rows: Any = client.redis.xreadgroup(GROUP, "node", {client.broker.keys.stream: ">"},
                                        count=100)
    if not rows:
        return 0
    reports = [(eid, runner.run_entry(Entry.from_fields(eid, f))) for eid, f in rows[0][1]]
    client.broker.complete("node", reports, 60)
    return len(reports)


@pytest.fixture
def clients(redis: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Client]]:
    monkeypatch.setattr("taskq.client.client.connect", lambda url, **kw: redis)
    made = [Client(settings=Settings(url="redis://fixture/0")) for _ in range(2)]
    yield made
    for c in made:
        c.close()


def test_dedup_task_ids_carry_their_key() -> None:
    for key in ("invoice-42", "a|b:c-d", "ünï"):
        assert dedup_key_of(dedup_task_id(key, "c1-7")) == key
    assert dedup_key_of("abc-1") is None and dedup_key_of("dd-zz-1") is None


def test_applies_with_one_key_share_one_task_until_it_is_done(
        clients: list[Client], redis: redis_lib.Redis) -> None:
    a, b = clients
    keys = a.broker.keys
    first = a.apply(schedule_tasks.stamp, ["one"], dedup_key="invoice-42")
    again = a.apply(schedule_tasks.stamp, ["two"], dedup_key="invoice-42")
    other = b.apply(schedule_tasks.stamp, ["three"], dedup_key="invoice-42")
    assert again is first  # one client, one key: the same Future
    assert other.task_id == first.task_id  # type: ignore[attr-defined]
    assert redis.xlen(keys.stream) == 1 and int(redis.hget(keys.stats, "enqueued")) == 1
    assert run_all(a) == 1
    # The completion script pushed the outcome to both producers, and released the key.
    assert first.result(timeout=10)[1] == "one" and other.result(timeout=10)[1] == "one"
    assert not redis.exists(keys.dedup("invoice-42"))
    assert not redis.exists(keys.dedup_waiters("invoice-42"))
    later = b.apply(schedule_tasks.stamp, ["four"], dedup_key="invoice-42")  # a new task
    assert later.task_id != first.task_id  # type: ignore[attr-defined]
    assert run_all(b) == 1 and later.result(timeout=10)[1] == "four"


def test_with_a_ttl_the_key_outlives_its_task_and_the_stored_result_answers(
        clients: list[Client], redis: redis_lib.Redis) -> None:
    a, b = clients
    keys = a.broker.keys
    first = a.apply(schedule_tasks.stamp, ["one"], dedup_key="k", dedup_ttl=600)
    assert redis.pttl(keys.dedup("k")) > 600_000  # held while queued: not the TTL yet
    assert run_all(a) == 1 and first.result(timeout=10)[1] == "one"
    assert 0 < redis.pttl(keys.dedup("k")) <= 600_000
    after = b.apply(schedule_tasks.stamp, ["two"], dedup_key="k", dedup_ttl=600)
    assert after.result(timeout=10)[1] == "one"  # from the stored result, nothing queued
    assert redis.xlen(keys.stream) == 0 and int(redis.hget(keys.stats, "enqueued")) == 1


def test_a_delayed_dedup_task_holds_its_key_while_it_waits(
        clients: list[Client], redis: redis_lib.Redis) -> None:
    a, b = clients
    first = a.apply(schedule_tasks.stamp, ["one"], dedup_key="d", delay=60)
    other = b.apply(schedule_tasks.stamp, ["two"], dedup_key="d")
    assert other.task_id == first.task_id  # type: ignore[attr-defined]
    assert redis.zcard(a.broker.keys.delayed) == 1 and redis.xlen(a.broker.keys.stream) == 0


def test_bad_dedup_options_raise_at_the_call(clients: list[Client]) -> None:
    a = clients[0]
    with pytest.raises(ValueError):
        a.apply(schedule_tasks.stamp, [], dedup_key="")
    with pytest.raises(TypeError):
        a.apply(schedule_tasks.stamp, [], dedup_ttl=5)
    with pytest.raises(ValueError):
        a.apply(schedule_tasks.stamp, [], dedup_key="x", dedup_ttl=-1)


@pytest.mark.timeout(60)
def test_concurrent_applies_from_many_producers_collapse_onto_one_task(redis_url: str) -> None:
    producers = [taskq.Client(redis_url) for _ in range(4)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "2",
         "--import", "schedule_tasks"], env=ENV, stderr=subprocess.DEVNULL)
    try:
        futures: list[Future[Any]] = []
        lock, go = threading.Lock(), threading.Barrier(8)

        def apply(client: Client, i: int) -> None:
            go.wait()
            fut = client.apply(schedule_tasks.slow, [1.0, f"call-{i}"], dedup_key="report")
            with lock:
                futures.append(fut)

        threads = [threading.Thread(target=apply, args=(producers[i % 4], i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        values = {f.result(timeout=30) for f in futures}
        assert len(futures) == 8 and len(values) == 1
        stats = redis_lib.Redis.from_url(redis_url).hgetall("taskq:{default}:stats")
        assert int(stats[b"enqueued"]) == 1 and int(stats[b"done"]) == 1
    finally:
        worker.kill()
        worker.wait(timeout=10)
        for c in producers:
            c.close()
