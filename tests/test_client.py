"""The producer API against a stand-in worker that reports through the broker."""

from __future__ import annotations

import threading
from concurrent.futures import as_completed
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import GROUP
from taskq.client import Client
from taskq.errors import TaskError
from taskq.message import Entry
from taskq.node import runner


@taskq.task(name="tests.client.add")
def add(a: int, b: int) -> int:
    return a + b


@taskq.task(name="tests.client.explode")
def explode(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


class FakeNode:
    """Claims and runs entries in-process with the real runner, reports with the real script."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.broker = client.broker
        self.redis = client.redis
        self.broker.ensure_group()

    def run_all(self) -> int:
        assert self.client.flush(timeout=10)  # single submits are sent in the background
        rows = self.redis.xreadgroup(GROUP, "node", {self.broker.keys.stream: ">"}, count=10_000)
        if not rows:
            return 0
        reports = []
        for eid, fields in rows[0][1]:
            reports.append((eid, runner.run_entry(Entry.from_fields(eid, fields))))
        self.broker.complete("node", reports, 60)
        return len(reports)



def test_submit_resolves_a_real_future(client: Client) -> None:
    futures = [client.submit(add, i, 1) for i in range(5)]
    assert FakeNode(client).run_all() == 5
    assert sorted(f.result(timeout=10) for f in as_completed(futures, timeout=10)) == [1, 2, 3, 4, 5]


def test_remote_exception_comes_back_as_task_error(client: Client) -> None:
    fut = client.submit("fail", "nope")
    FakeNode(client).run_all()
    with pytest.raises(TaskError) as info:
        fut.result(timeout=10)
    assert info.value.type_name == "RuntimeError" and info.value.message == "nope"
    assert "raise RuntimeError(message)" in info.value.remote_traceback


def test_wrong_arguments_fail_on_the_producer(client: Client) -> None:
    with pytest.raises(TypeError):
        client.submit(add, 1)
    with pytest.raises(TypeError, match="must be int"):
        client.submit("primes", "abc", 3)
    assert client.redis.xlen(client.broker.keys.stream) == 0


def test_map_is_ordered_and_chunked(client: Client) -> None:
    it = client.map(add, range(10), range(10), chunksize=3)
    assert client.redis.xlen(client.broker.keys.stream) == 4
    FakeNode(client).run_all()
    assert list(it) == [2 * i for i in range(10)]


def test_map_raises_at_the_failing_item(client: Client) -> None:
    it = client.map(explode, range(6), chunksize=2)
    FakeNode(client).run_all()
    assert next(it) == 0 and next(it) == 1 and next(it) == 2
    with pytest.raises(TaskError, match="bad item 3"):
        next(it)


def test_imap_keeps_a_bounded_window(client: Client) -> None:
    node = FakeNode(client)
    results: list[int] = []
    it = client.imap("echo", range(100), chunksize=5, window=3)

    def consume() -> None:
        results.extend(it)

    t = threading.Thread(target=consume)
    t.start()
    seen_max = 0
    while t.is_alive() or client.redis.xlen(client.broker.keys.stream):
        depth = client.redis.xlen(client.broker.keys.stream)
        seen_max = max(seen_max, depth)
        node.run_all()
        t.join(timeout=0.01)
    assert results == list(range(100))
    assert seen_max <= 3


def test_send_is_fire_and_forget_and_batches_count(client: Client) -> None:
    task_id = client.send("echo", 1)
    batch = client.send_many("echo", [[i] for i in range(7)])
    FakeNode(client).run_all()
    assert client.result(task_id) is None  # nothing stored
    status = batch.wait(timeout=10)
    assert (status.total, status.done, status.failed) == (7, 7, 0)
    assert client.broker.info()["done"] == 8


def test_batch_wait_times_out(client: Client) -> None:
    batch = client.send_many("echo", [[1]])
    with pytest.raises(TimeoutError):
        batch.wait(timeout=0.2)


def test_one_by_one_submits_share_round_trips(client: Client) -> None:
    futures = [client.submit("echo", i) for i in range(500)]
    assert client.flush(timeout=10)
    assert client.redis.xlen(client.broker.keys.stream) == 500
    assert client.broker.info()["enqueued"] == 500
    FakeNode(client).run_all()
    assert [f.result(timeout=10) for f in futures] == list(range(500))


def test_enqueue_failure_fails_the_future_not_the_caller(client: Client) -> None:
    client._sender._retry_for = 0.2

    def unreachable(*args: object) -> None:
        raise redis_lib.ConnectionError("Connection refused")

    client._write = unreachable  # type: ignore[method-assign]
    client._sender._write = unreachable
    fut = client.submit("echo", 1)
    with pytest.raises(taskq.BrokerError, match="cannot enqueue"):
        fut.result(timeout=10)


def test_close_stops_the_listener_promptly(client: Client) -> None:
    client.submit("echo", 1)
    name = f"taskq-replies-{client.client_id}"
    (listener,) = [t for t in threading.enumerate() if t.name == name]
    client.close()
    assert not listener.is_alive()


# -- hardening: a bad call fails alone, at the call ---------------------------------------


def test_a_bad_call_fails_alone_at_the_call_and_its_neighbours_are_untouched(
        client: Client) -> None:
    errors: list[BaseException] = []
    good: list[object] = []

    def neighbour() -> None:  # another thread submitting while the bad call is made
        try:
            good.extend(client.submit(add, 10, i) for i in range(50))
        except BaseException as exc:  # pragma: no cover - would fail the test below
            errors.append(exc)

    thread = threading.Thread(target=neighbour)
    thread.start()
    before = [client.submit(add, 1, i) for i in range(20)]
    with pytest.raises(TypeError, match=r"\[0\]|set"):
        client.submit("echo", {1, 2})  # by name, and a set: JSON cannot carry it
    after = [client.submit(add, 2, i) for i in range(20)]
    thread.join(10)
    FakeNode(client).run_all()
    assert not errors
    assert [f.result(timeout=10) for f in before] == [1 + i for i in range(20)]
    assert [f.result(timeout=10) for f in after] == [2 + i for i in range(20)]
    assert [f.result(timeout=10) for f in good] == [10 + i for i in range(50)]  # type: ignore[attr-defined]
    assert len(client._replies.waiting()) == 0  # the bad call left no future behind


def test_a_message_over_the_size_limit_is_refused_on_the_producer(client: Client) -> None:
    client.settings = client.settings.with_(max_message_bytes=4096)
    with pytest.raises(ValueError, match="over the 4096-byte limit"):
        client.submit("echo", "x" * 5000)
    with pytest.raises(ValueError, match="4096-byte limit"):
        client.send("echo", "x" * 5000)
    assert client.redis.xlen(client.broker.keys.stream) == 0


@pytest.mark.parametrize("call", [
    lambda c: c.map(add, [1], [2], chunksize=0),
    lambda c: c.map(add, [1], [2], chunksize=-3),
    lambda c: c.imap(add, [(1, 2)], window=0, star=True),
    lambda c: c.imap(add, [(1, 2)], chunksize=0, star=True),
    lambda c: c.apply(add, (1, 2), timeout=0),
    lambda c: c.apply(add, (1, 2), timeout=-1),
    lambda c: c.apply(add, (1, 2), timeout="soon"),
], ids=["map-0", "map-neg", "imap-window-0", "imap-chunk-0", "apply-0", "apply-neg", "apply-str"])
def test_bad_chunk_sizes_windows_and_timeouts_raise_at_the_call(client: Client, call: Any) -> None:
    with pytest.raises(ValueError):
        call(client)  # not an empty result, not a dead letter later
    assert client.redis.xlen(client.broker.keys.stream) == 0 if client.redis.exists(
        client.broker.keys.stream) else True
