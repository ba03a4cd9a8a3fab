"""The node loop in process, on fakeredis: claim → dispatch → report, leases, reclaim,
dead letters, drain and outages, one ``Node.step()`` at a time.

Only the node parent talks to Redis; its pool processes are forked but never do, so
fakeredis serves the parent. Tasks that must stay running wait on a :class:`Gate` (two
pipes made before the pool forks), never on a sleep. Leases are aged with
``XCLAIM … IDLE`` instead of waited out, and periodic work is made due through
``node.schedule``. The subprocess tests that really kill things are test_reliability.py.
"""

from __future__ import annotations

import os
import select
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import node_helpers
import orjson
import pytest
import redis as redis_lib
from node_helpers import step_until

import taskq
from taskq.broker import GROUP, Broker, QueueKeys
from taskq.broker.claim import SyncClaim
from taskq.config import Settings
from taskq.message import TaskMessage
from taskq.node.node import Node
from taskq.node.schedule import PERIODIC
from taskq.outcome import Outcome, decode_outcome, decode_outcomes
from taskq.signing import outcome_verifies, sign

pytestmark = pytest.mark.timeout(30)

KEYS = QueueKeys("default")
STREAM = KEYS.stream
PRODUCER = "producer-1"


@taskq.task(name="tests.node.add")
def add(a: int, b: int) -> int:
    return a + b


@taskq.task(name="tests.node.gated")
def gated(started_fd: int, go_fd: int, value: Any) -> Any:
    """Say it started, then wait for the test's go."""
    os.write(started_fd, b"s")
    os.read(go_fd, 1)
    return value


class Gate:
    """Pipes shared with the forked pool: tasks announce their start and wait for a go."""

    def __init__(self) -> None:
        self.started_r, self.started_w = os.pipe()
        self.go_r, self.go_w = os.pipe()
        self.started = 0

    def args(self, value: Any) -> tuple[int, int, Any]:
        return (self.started_w, self.go_r, value)

    def poll_started(self) -> int:
        while select.select([self.started_r], [], [], 0)[0]:
            self.started += len(os.read(self.started_r, 64))
        return self.started

    def open(self, n: int = 1) -> None:
        os.write(self.go_w, b"g" * n)

    def close(self) -> None:
        for fd in (self.started_r, self.started_w, self.go_r, self.go_w):
            os.close(fd)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def r(server: fakeredis.FakeServer) -> Iterator[redis_lib.Redis]:
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.open(64)  # whatever still waits may finish (the pool is killed anyway)
    g.close()


@pytest.fixture
def make_node(r: redis_lib.Redis) -> Iterator[Callable[..., Node]]:
    """Started nodes on ``r`` (procs=1, lease=1 s unless told); all closed at teardown."""
    nodes: list[Node] = []

    def make(*, burst: bool = False, node_id: str | None = None, claim: Any = None,
             **settings: Any) -> Node:
        options: dict[str, Any] = {"procs": 1, "lease": 1.0, **settings}
        node = Node(Settings(url="redis://fake/0", **options), client=r, claim=claim,
                    burst=burst, node_id=node_id)
        nodes.append(node)
        node.start()
        return node

    yield make
    for node in nodes:
        node.close()


def enqueue(r: redis_lib.Redis, task: str, *args: Any) -> str:
    return node_helpers.enqueue(r, task, *args, reply_to=PRODUCER)


def result(r: redis_lib.Redis, task_id: str) -> Outcome | None:
    raw = Broker(r, "default").result(task_id)
    return None if raw is None else decode_outcome(raw)


def replies(r: redis_lib.Redis) -> list[Outcome]:
    blobs: Any = r.lrange(KEYS.inbox(PRODUCER), 0, -1)
    return [o for blob in blobs for o in decode_outcomes(blob)]


def pending(r: redis_lib.Redis) -> list[dict[str, Any]]:
    rows: Any = r.xpending_range(STREAM, GROUP, "-", "+", 100)
    return list(rows)


def delivered_to(r: redis_lib.Redis, consumer: str, *, age: float | None = None,
                 deliveries: int | None = None) -> bytes:
    """Deliver the next queued entry to another ``consumer`` (a node that then dies),
    optionally as if it had been idle ``age`` seconds and delivered ``deliveries`` times."""
    rows: Any = r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1)
    entry_id: bytes = rows[0][1][0][0]
    if age is not None:
        r.xclaim(STREAM, GROUP, consumer, 0, [entry_id], idle=int(age * 1000),
                 retrycount=deliveries, justid=True)
    return entry_id


def test_claim_dispatch_report(r: redis_lib.Redis, make_node: Callable[..., Node]) -> None:
    node = make_node(node_id="node-a", claim=SyncClaim(r, [STREAM], "node-a"))
    ids = [enqueue(r, "tests.node.add", i, 1) for i in range(3)]
    step_until(node, lambda: node.processed == 3 and node.unreported_count == 0, "3 reports")
    for i, task_id in enumerate(ids):
        stored = result(r, task_id)
        assert stored is not None and stored.result() == i + 1
    assert sorted((o.task_id, o.value) for o in replies(r)) == sorted(
        (task_id, i + 1) for i, task_id in enumerate(ids))
    assert pending(r) == [] and r.xlen(STREAM) == 0  # acked and deleted
    assert r.hget(KEYS.stats, "done") == b"3"
    consumers: Any = r.xinfo_consumers(STREAM, GROUP)
    assert [c["name"] for c in consumers] == [b"node-a"]  # the claim it was given
    assert node.held_count == 0 and node.failed == 0 and node.state == "running"


def test_claim_size_is_respected(r: redis_lib.Redis, make_node: Callable[..., Node],
                                 gate: Gate) -> None:
    node = make_node(procs=2, claim_size=3)  # the pool alone would take 4 (2 + 2 queued)
    ids = [enqueue(r, "tests.node.gated", *gate.args(i)) for i in range(10)]
    node.step(0)
    assert node.held_count == 3
    assert len(pending(r)) == 3
    gate.open(10)
    step_until(node, lambda: node.processed == 10 and node.unreported_count == 0, "10 reports")
    assert [result(r, t).result() for t in ids] == list(range(10))  # type: ignore[union-attr]


def test_renew_keeps_the_lease(r: redis_lib.Redis, make_node: Callable[..., Node],
                               gate: Gate) -> None:
    node = make_node(node_id="node-a")
    task_id = enqueue(r, "tests.node.gated", *gate.args("done"))
    step_until(node, lambda: gate.poll_started() == 1, "the task to start")
    [held] = pending(r)
    # As if the last renewal were 5 s ago: any node could take it now...
    r.xclaim(STREAM, GROUP, "node-a", 0, [held["message_id"]], idle=5000, justid=True)
    assert pending(r)[0]["time_since_delivered"] >= 5000
    node.schedule.make_due("renew")
    node.step(0)
    # ...but the renewal reset its lease clock, so no other node can.
    assert pending(r)[0]["time_since_delivered"] < 1000
    assert Broker(r, "default").reclaim("node-b", lease=1.0, count=10) == []
    gate.open()
    step_until(node, lambda: node.processed == 1 and node.unreported_count == 0, "the report")
    stored = result(r, task_id)
    assert stored is not None and stored.result() == "done"
    assert r.hget(KEYS.stats, "suppressed") is None


def test_reclaims_expired_entries_of_another_node(r: redis_lib.Redis,
                                                  make_node: Callable[..., Node]) -> None:
    node = make_node(node_id="node-a")
    node.step(0)  # the first housekeeping: nothing to reclaim yet
    assert node.schedule.due_at("reclaim") > time.monotonic()
    expired = enqueue(r, "tests.node.add", 2, 3)
    fresh = enqueue(r, "tests.node.add", 4, 5)
    delivered_to(r, "node-dead", age=5.0)  # past the 1 s lease
    fresh_id = delivered_to(r, "node-busy")  # within its lease
    node.schedule.make_due("reclaim")
    step_until(node, lambda: node.processed == 1 and node.unreported_count == 0, "the reclaim")
    stored = result(r, expired)
    assert stored is not None and stored.result() == 5
    assert result(r, fresh) is None
    assert [(p["message_id"], p["consumer"]) for p in pending(r)] == [(fresh_id, b"node-busy")]


def test_dead_letters_past_max_deliveries(r: redis_lib.Redis,
                                          make_node: Callable[..., Node]) -> None:
    node = make_node(max_deliveries=2)
    task_id = enqueue(r, "tests.node.add", 1, 1)
    entry_id = delivered_to(r, "node-dead", age=5.0, deliveries=2)  # a 3rd delivery is too many
    node.schedule.make_due("reclaim")
    step_until(node, lambda: r.xlen(KEYS.dead) == 1 and node.unreported_count == 0,
               "the dead letter")
    assert node.processed == 0  # never run
    [(_, fields)] = Broker(r, "default").dead_entries()
    assert fields[b"entry"] == entry_id and b"max_deliveries" in fields[b"reason"]
    [reply] = replies(r)
    assert reply.task_id == task_id and reply.error is not None
    assert reply.error[0] == "DeadLetteredError"
    assert pending(r) == [] and r.xlen(STREAM) == 0


def test_dead_letters_an_oversized_message(r: redis_lib.Redis,
                                           make_node: Callable[..., Node]) -> None:
    node = make_node(max_message_bytes=200)
    task_id = enqueue(r, "tests.node.add", "x" * 500, "y")
    step_until(node, lambda: r.xlen(KEYS.dead) == 1 and node.unreported_count == 0,
               "the dead letter")
    assert node.processed == 0
    stored = result(r, task_id)
    assert stored is not None and stored.error is not None and "200-byte limit" in stored.error[1]


def test_long_tasks_after_short_ones_are_not_hoarded(
        r: redis_lib.Redis, make_node: Callable[..., Node], gate: Gate) -> None:
    node = make_node(procs=2, node_id="node-a")
    for i in range(300):
        enqueue(r, "tests.node.add", i, 1)
    step_until(node, lambda: node.processed == 300 and node.unreported_count == 0, "the burst")
    assert node.pool.idle_capacity > 20  # short tasks: the pool wants many in flight
    long_ids = {enqueue(r, "tests.node.gated", *gate.args(i)) for i in range(60)}
    node.step(0)
    assert node.held_count > 20  # the claim took a burst's worth of long tasks...
    step_until(node, lambda: gate.poll_started() == 2, "both processes to start one")
    # ...but once they overrun, it keeps two running and one queued behind each.
    step_until(node, lambda: node.held_count <= 4, "the surplus handed back", timeout=5.0)
    for _ in range(5):  # and it does not take them again while its tasks still run
        node.step(0.05)
    assert node.held_count == len(pending(r)) == 4 and gate.poll_started() == 2
    rows: Any = r.xreadgroup(GROUP, "node-b", {STREAM: ">"}, count=100)  # another node gets them
    assert len(rows[0][1]) == 56
    gate.open(4)
    step_until(node, lambda: node.processed == 304 and node.unreported_count == 0, "its 4")
    ran = {t for t in long_ids if result(r, t) is not None}
    assert len(ran) == 4 and gate.poll_started() == 4


def test_graceful_drain_hands_back_unstarted_and_finishes_running(
        r: redis_lib.Redis, make_node: Callable[..., Node], gate: Gate) -> None:
    node = make_node(node_id="node-a")
    running = enqueue(r, "tests.node.gated", *gate.args("ran"))
    for i in range(2):
        enqueue(r, "tests.node.gated", *gate.args(i))
    step_until(node, lambda: gate.poll_started() == 1, "the first task to start")
    assert node.held_count == 2  # one running, one queued in the pool behind it
    node.request_stop()
    node.step(0)
    assert node.state == "draining"
    assert node.held_count == 1 and not node.finished()
    assert [p["consumer"] for p in pending(r)] == [b"node-a"]  # the other went back
    assert r.xlen(STREAM) == 3  # the running one, the unclaimed one and the one handed back
    gate.open()
    step_until(node, node.finished, "the drain")
    node.stop()
    assert node.state == "closed" and node.processed == 1
    stored = result(r, running)
    assert stored is not None and stored.result() == "ran"
    assert pending(r) == [] and r.xlen(STREAM) == 2  # both left for another node
    assert gate.poll_started() == 1  # nothing else started while draining


def test_outage_keeps_outcomes_until_redis_is_back(
        r: redis_lib.Redis, server: fakeredis.FakeServer, make_node: Callable[..., Node],
        gate: Gate) -> None:
    node = make_node(node_id="node-a")
    task_id = enqueue(r, "tests.node.gated", *gate.args("kept"))
    step_until(node, lambda: gate.poll_started() == 1, "the task to start")
    server.connected = False  # every command now raises ConnectionError
    gate.open()
    step_until(node, lambda: node.processed == 1, "the task to finish")
    for _ in range(5):  # a few turns (and failed reconnection attempts) later: still kept
        node.step(0.05)
    assert node.unreported_count == 1
    server.connected = True
    # Back, before the node's next turn: nothing was acknowledged or recorded early.
    assert [p["consumer"] for p in pending(r)] == [b"node-a"]
    assert result(r, task_id) is None
    step_until(node, lambda: node.unreported_count == 0, "the report after the outage")
    stored = result(r, task_id)
    assert stored is not None and stored.result() == "kept"
    assert pending(r) == [] and [o.value for o in replies(r)] == ["kept"]


def test_run_in_burst_mode_serves_the_queue_then_returns(r: redis_lib.Redis) -> None:
    ids = [enqueue(r, "tests.node.add", i, i) for i in range(5)]
    node = Node(Settings(url="redis://fake/0", procs=2, lease=1.0), client=r, burst=True)
    assert node.run() == 0
    assert node.state == "closed" and node.processed == 5
    assert [result(r, t).result() for t in ids] == [0, 2, 4, 6, 8]  # type: ignore[union-attr]
    assert pending(r) == [] and r.xlen(STREAM) == 0


def test_outage_while_draining_keeps_a_failed_report_until_redis_is_back(
        r: redis_lib.Redis, server: fakeredis.FakeServer, make_node: Callable[..., Node],
        gate: Gate) -> None:
    node = make_node(node_id="node-a")
    task_id = enqueue(r, "tests.node.gated", *gate.args("kept"))
    step_until(node, lambda: gate.poll_started() == 1, "the task to start")
    node.request_stop()
    node.step(0)
    # Draining claims nothing; with no periodic work due either, the completion call is
    # the first command the node sends after Redis goes away: it fails, and is kept.
    for name in PERIODIC:
        node.schedule.set(name, time.monotonic() + 60)
    server.connected = False
    gate.open()
    step_until(node, lambda: node.processed == 1, "the task to finish")
    assert node.unreported_count == 1 and not node.finished()
    server.connected = True
    assert [p["consumer"] for p in pending(r)] == [b"node-a"] and result(r, task_id) is None
    step_until(node, node.finished, "the report after the outage")
    node.stop()
    stored = result(r, task_id)
    assert stored is not None and stored.result() == "kept"
    assert pending(r) == [] and r.xlen(STREAM) == 0


SECRET = b"s" * 32


@pytest.mark.parametrize("signed", [True, False])
def test_a_poison_dead_letter_is_signed_exactly_when_its_entry_was(
        r: redis_lib.Redis, make_node: Callable[..., Node], signed: bool) -> None:
    """A producer with a secret accepts only replies signed for its task: the node parent's
    own dead letters (poison, oversize) are signed for entries the producer signed, and
    never for one it did not (a forged entry must not earn a signed reply)."""
    node = make_node(max_deliveries=2, secret=SECRET)
    task_id = uuid.uuid4().hex
    body = TaskMessage(task_id, "tests.node.add", [1, 1], reply_to=PRODUCER).encode()
    Broker(r, "default").enqueue([(body, sign(SECRET, "default", body) if signed else None)])
    delivered_to(r, "node-dead", age=5.0, deliveries=2)
    node.schedule.make_due("reclaim")
    step_until(node, lambda: r.xlen(KEYS.dead) == 1 and node.unreported_count == 0,
               "the dead letter")
    [blob] = r.lrange(KEYS.inbox(PRODUCER), 0, -1)
    [obj] = orjson.loads(blob)
    assert obj["e"][0] == "DeadLetteredError"
    assert outcome_verifies(SECRET, task_id, obj) is signed
