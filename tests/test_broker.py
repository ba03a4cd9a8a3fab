"""The Redis protocol: every script on fakeredis and on a real server."""

from __future__ import annotations

import time

import orjson
import pytest
import redis as redis_lib

from taskq.broker import GROUP, Broker
from taskq.message import Entry, Report, TaskMessage, routing_of
from taskq.outcome import encode_error, encode_ok

pytestmark = pytest.mark.realserver


def _enqueue(broker: Broker, n: int, **kw: object) -> None:
    messages = [TaskMessage(id=f"t{i}", task="echo", args=[i], **kw)  # type: ignore[arg-type]
                for i in range(n)]
    broker.enqueue([(m.encode(), None) for m in messages])


def _claim(broker: Broker, node: str, n: int = 100) -> list[Entry]:
    rows = broker.client.xreadgroup(GROUP, node, {broker.keys.stream: ">"}, count=n)
    return [Entry.from_fields(eid, f) for eid, f in rows[0][1]] if rows else []


def _ok(entry: Entry) -> tuple[bytes, Report]:
    routing = routing_of(entry.body)
    assert routing is not None
    return entry.entry_id, Report("ok", routing, encode_ok(routing.task_id, "v"))


@pytest.fixture
def broker(redis: redis_lib.Redis) -> Broker:
    b = Broker(redis, "q")
    b.ensure_group()
    return b


def test_complete_acks_deletes_stores_and_replies(broker: Broker) -> None:
    messages = [TaskMessage(id=f"t{i}", task="echo", args=[i], reply_to="c1", keep_result=True,
                            batch="B") for i in range(3)]
    broker.enqueue([(m.encode(), None) for m in messages], ("B", 60, {}))
    entries = _claim(broker, "n1")
    assert broker.info()["in_flight"] == 3
    assert broker.complete("n1", [_ok(e) for e in entries[:2]], 60) == (2, 0)
    assert broker.client.xlen(broker.keys.stream) == 1  # acked AND deleted
    assert orjson.loads(broker.result("t0") or b"") == {"id": "t0", "ok": True, "v": "v"}
    assert 0 < broker.client.pttl(broker.keys.result("t0")) <= 60_000
    inbox = broker.client.lrange(broker.keys.inbox("c1"), 0, -1)
    assert [o["id"] for o in orjson.loads(inbox[0])] == ["t0", "t1"]  # one push per call
    assert broker.client.llen(broker.keys.batch_events("B")) == 0
    fail = (entries[2].entry_id, Report("fail", routing_of(entries[2].body),
                                        encode_error("t2", ("ValueError", "x", ""))))
    broker.complete("n1", [fail], 60)
    assert broker.batch_status("B") == {"total": "3", "done": "2", "failed": "1"}
    assert broker.client.llen(broker.keys.batch_events("B")) == 1  # complete: waiters wake
    info = broker.info()
    assert (info["queued"], info["in_flight"], info["done"], info["failed"], info["enqueued"]) == (
        0, 0, 2, 1, 3)


def test_fire_and_forget_stores_nothing(broker: Broker) -> None:
    _enqueue(broker, 1, keep_result=False)
    (entry,) = _claim(broker, "n1")
    broker.complete("n1", [_ok(entry)], 60)
    assert broker.result("t0") is None
    assert broker.info()["done"] == 1


def test_late_report_from_a_node_that_lost_its_lease_is_suppressed(broker: Broker) -> None:
    _enqueue(broker, 1, keep_result=True)
    (entry,) = _claim(broker, "old")
    time.sleep(0.02)
    ((taken, deliveries),) = broker.reclaim("new", lease=0.01, count=10)
    assert taken.entry_id == entry.entry_id and deliveries == 2
    new_outcome = (entry.entry_id, Report("ok", routing_of(entry.body), encode_ok("t0", "new")))
    stale = (entry.entry_id, Report("ok", routing_of(entry.body), encode_ok("t0", "stale")))
    assert broker.complete("old", [stale], 60) == (0, 1)
    assert broker.result("t0") is None  # nothing written by the stale node
    assert broker.complete("new", [new_outcome], 60) == (1, 0)
    assert orjson.loads(broker.result("t0") or b"")["v"] == "new"
    assert broker.complete("old", [stale], 60) == (0, 1)  # and not after either
    assert orjson.loads(broker.result("t0") or b"")["v"] == "new"
    assert broker.info()["suppressed"] == 2


def test_ownership_is_read_right_past_a_truncated_range_and_other_nodes_entries(
        broker: Broker) -> None:
    """complete.lua reads ownership with one XPENDING over the reported ids' range: with
    hundreds of this node's entries pending in between (the range read is truncated) and
    another node's entries interleaved, exactly the owned, reported ones are applied."""
    _enqueue(broker, 400, keep_result=True)
    mine = _claim(broker, "n1", 150)
    theirs = _claim(broker, "n2", 100)
    mine += _claim(broker, "n1", 150)
    reported = [mine[0], mine[149], mine[150], mine[-1]]  # range lo..hi spans all 400
    assert broker.complete("n1", [_ok(e) for e in [*reported, theirs[7]]], 60) == (4, 1)
    done = {routing_of(e.body).task_id for e in reported}  # type: ignore[union-attr]
    assert all(broker.result(t) is not None for t in done)
    assert broker.result(routing_of(theirs[7].body).task_id) is None  # type: ignore[union-attr]
    assert broker.info()["in_flight"] == 400 - 4
    assert broker.complete("n2", [_ok(theirs[7])], 60) == (1, 0)


def test_renew_keeps_the_lease_and_only_for_the_owner(broker: Broker) -> None:
    _enqueue(broker, 2)
    _claim(broker, "n1")
    time.sleep(0.05)
    assert broker.renew("n1") == 2
    assert broker.reclaim("n2", lease=0.04, count=10) == []  # renewed: not expired
    assert broker.renew("n2") == 0  # renewing never steals


def test_renew_in_slices_and_pages_renews_exactly_what_is_listed_and_owned(
        broker: Broker) -> None:
    """Listed ids go in sorted slices (broker.RENEW_SLICE), each over its own id range,
    read in pages when the node owns many unlisted entries in between: every listed,
    owned entry is renewed; unlisted ones and one reclaimed by another node are not."""
    _enqueue(broker, 2600)
    mine = _claim(broker, "n1", 2500)
    theirs = _claim(broker, "n2", 100)
    time.sleep(0.06)
    listed = [e.entry_id for e in mine[:1200]] + [mine[-1].entry_id]  # 2 slices; 1,299 unlisted
    stolen = broker.reclaim("n3", lease=0.05, count=1, plain=True)[0][0].entry_id
    assert stolen == mine[0].entry_id
    assert broker.renew("n1", [*listed[::-1], theirs[0].entry_id]) == len(listed) - 1
    idle = {row["message_id"]: row["time_since_delivered"] for row in
            broker.client.xpending_range(broker.keys.stream, GROUP, "-", "+", 3000)}
    assert all(idle[i] < 50 for i in listed[1:])
    assert all(idle[e.entry_id] >= 50 for e in mine[1200:-1])  # unlisted: left to expire
    assert idle[theirs[0].entry_id] >= 50  # another node's: never touched


def test_retry_goes_through_the_delayed_set_with_the_next_attempt(broker: Broker) -> None:
    _enqueue(broker, 1)
    (entry,) = _claim(broker, "n1")
    due_ms = int(time.time() * 1000) + 60_000
    member = entry.packed(attempt=2)
    retry = (entry.entry_id, Report("retry", routing_of(entry.body), b"", member,
                                    str(due_ms).encode()))
    assert broker.complete("n1", [retry], 60) == (1, 0)
    assert broker.promote() == 0  # not due yet
    broker.client.zadd(broker.keys.delayed, {member: 1})  # the backoff has passed
    assert broker.promote() == 1
    (again,) = _claim(broker, "n1")
    assert again.attempt == 2 and again.body == entry.body
    assert broker.info()["retried"] == 1


def test_dead_letter_retry_and_purge(broker: Broker) -> None:
    _enqueue(broker, 2, reply_to="c1")
    entries = _claim(broker, "n1")
    reports = [(e.entry_id, Report("dead", routing_of(e.body),
                                   encode_error("t", ("DeadLetteredError", "bad", "")), e.packed(),
                                   b"poison"))
               for e in entries]
    broker.complete("n1", reports, 60)
    dead = broker.dead_entries()
    assert len(dead) == 2 and dead[0][1][b"reason"] == b"poison"
    assert broker.info()["dead"] == 2 and broker.info()["failed"] == 2
    assert broker.dead_retry([dead[0][0]]) == 1
    assert broker.client.xlen(broker.keys.stream) == 1
    assert broker.dead_purge() == 1
    assert broker.dead_entries() == []


def test_hand_back_requeues_only_what_the_node_owns(broker: Broker) -> None:
    _enqueue(broker, 3)
    entries = _claim(broker, "n1")
    assert broker.hand_back("n2", [e.entry_id for e in entries]) == 0
    assert broker.hand_back("n1", [e.entry_id for e in entries[:2]]) == 2
    info = broker.info()
    assert (info["queued"], info["in_flight"]) == (2, 1)
    assert sorted(e.body for e in _claim(broker, "n2")) == sorted(e.body for e in entries[:2])


def test_keys_share_the_queue_hash_tag(broker: Broker) -> None:
    k = broker.keys
    for key in (k.stream, k.stats, k.delayed, k.dead, k.result("t"), k.inbox("c"),
                k.batch("b"), k.batch_events("b")):
        assert key.startswith("taskq:{q}:")


def test_replies_queue_oldest_first(broker: Broker) -> None:
    _enqueue(broker, 3, reply_to="c1")
    entries = _claim(broker, "n1")
    for entry in entries:  # three separate completion calls
        broker.complete("n1", [_ok(entry)], 60)
    first = broker.client.lpop(broker.keys.inbox("c1"))
    assert [o["id"] for o in orjson.loads(first or b"")] == ["t0"]
