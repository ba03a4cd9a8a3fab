"""A node's completion calls answered while its loop goes on (taskq.broker.reporting),
on a real server: outcomes are applied once each, a server that lost its scripts gets the
call again, and an abandoned call (Redis gone mid-call) loses nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_lib
from node_helpers import step_until

import taskq
from taskq.config import Settings
from taskq.node.node import Node

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(60)]


@pytest.fixture
def node(redis_url: str) -> Iterator[Node]:
    n = Node(Settings(url=redis_url, procs=2, lease=5.0))  # its own connections: async calls
    n.start()
    try:
        yield n
    finally:
        n.stop()


def _run(node: Node, client: taskq.Client, count: int) -> list[object]:
    futures = [client.submit("echo", i) for i in range(count)]
    step_until(node, lambda: all(f.done() for f in futures), "every result", timeout=30)
    step_until(node, lambda: node.unreported_count == 0, "every outcome applied")
    return [f.result() for f in futures]


def test_outcomes_are_applied_once_each(node: Node, redis_url: str) -> None:
    with taskq.Client(redis_url) as client:
        assert _run(node, client, 300) == list(range(300))
        info = client.broker.info()
    assert (info["done"], info["suppressed"], info["queued"], info["in_flight"]) == (300, 0, 0, 0)


def test_a_server_that_lost_its_scripts_gets_the_call_again(node: Node, redis_url: str) -> None:
    """SCRIPT FLUSH (what a restart without persistence does to the script cache): the
    next EVALSHA is refused with NOSCRIPT, applied nothing, and is sent again."""
    with taskq.Client(redis_url) as client:
        assert _run(node, client, 20) == list(range(20))
        redis_lib.Redis.from_url(redis_url).script_flush()
        assert _run(node, client, 50) == list(range(50))
        info = client.broker.info()
    assert (info["done"], info["suppressed"], info["in_flight"]) == (70, 0, 0)


def test_an_abandoned_call_loses_nothing(node: Node, redis_url: str) -> None:
    """The connection of an outstanding call is killed: the node treats it as an
    outage, sends the outcomes again once Redis answers, and every future resolves
    (a call that had been applied is suppressed the second time, never applied twice)."""
    admin = redis_lib.Redis.from_url(redis_url)
    with taskq.Client(redis_url) as client:
        assert _run(node, client, 10) == list(range(10))
        futures = [client.submit("echo", i) for i in range(200)]
        killed = 0
        for _ in range(400):  # until a call is caught outstanding, then cut it
            node.step(0.01)
            if node.unreported_count and not killed:
                killed = sum(int(admin.client_kill_filter(_id=c["id"]))
                             for c in admin.client_list() if c.get("cmd") == "evalsha")
            if all(f.done() for f in futures):
                break
        assert killed >= 1, "no completion call was caught outstanding"
        step_until(node, lambda: all(f.done() for f in futures), "every result", timeout=30)
        assert [f.result() for f in futures] == list(range(200))
        step_until(node, lambda: node.unreported_count == 0, "every outcome applied")
        info = client.broker.info()
    assert info["done"] == 210 and info["in_flight"] == 0 and info["queued"] == 0
