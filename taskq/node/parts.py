"""How a node is put together, and what one finished job becomes.

:class:`~taskq.node.node.Node` owns the loop; this module owns the pieces it is made of
(its connection, its claim, its pool) and the one rule that turns a finished pool job into
the :class:`~taskq.message.Report` the node records — so the loop itself reads as the
loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from taskq.broker import Broker, connect
from taskq.broker.claim import Claim, Claimer, ClusterClaim, SyncClaim
from taskq.broker.cluster import is_cluster
from taskq.broker.reporting import Completion
from taskq.config import Settings
from taskq.message import Entry, Report
from taskq.node import runner
from taskq.node.control import cancelled_report
from taskq.node.holdings import log_task
from taskq.node.pool import Done, SupervisedPool

CLAIM_BLOCK = 2.0
"""Seconds one blocking claim waits; the claim socket's timeout is well above it."""
SOCKET_TIMEOUT = max(10.0, CLAIM_BLOCK + 5.0)


def connect_node(url: str) -> redis.Redis:
    """The node's client. No client-side retries: a retrying command would stall the loop
    for seconds while Redis is away; the loop backs off and reconnects by itself."""
    return connect(url, retries=False, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5.0)


def make_claim(url: str, client: redis.Redis, brokers: Sequence[Broker], node_id: str, *,
               in_process: bool) -> Claimer:
    """A blocking claim on a socket of its own; on a cluster serving several queues one
    per queue (one XREADGROUP over several slots is CROSSSLOT); in process (a given
    client, fakeredis included) a synchronous claim through that client."""
    streams = [b.keys.stream for b in brokers]
    if in_process:
        return SyncClaim(client, streams, node_id)
    multi = ClusterClaim if is_cluster(client) and len(streams) > 1 else Claim
    return multi(url, streams, node_id, socket_timeout=SOCKET_TIMEOUT)


def make_completions(url: str, brokers: Sequence[Broker], settings: Settings, *,
                     in_process: bool) -> list[Completion] | None:
    """A completion call per queue on a connection of its own, answered while the loop
    goes on (:mod:`taskq.broker.reporting`); None, for blocking calls, in process (a given
    client, fakeredis included) and with ``wait_replicas`` (the WAIT after each call
    shares the script's connection)."""
    if in_process or settings.wait_replicas:
        return None
    return [Completion(b, url, socket_timeout=SOCKET_TIMEOUT) for b in brokers]


def make_pool(settings: Settings, imports: Sequence[str], init: str | None,
              init_args: Sequence[Any]) -> SupervisedPool:
    """The supervised pool whose processes run :func:`taskq.node.runner.run_entry`."""
    return SupervisedPool(
        settings.procs,
        runner.run_entry,
        initializer=runner.init_child,
        initargs=(tuple(imports), init, tuple(init_args), settings.secret,
                  settings.require_signed),
        max_tasks_per_child=settings.max_tasks_per_child,
        max_memory_per_child=settings.max_memory_per_child,
        hard_timeout_grace=settings.hard_timeout_grace,
        give_back_surplus=True,  # it hands back what the pool would only hoard
    )


def report_for(done: Done, entry: Entry, secret: bytes | None) -> Report:
    """What a finished job becomes: the pool process's own report; ``cancelled``; or, when
    its process died or was killed at the hard time limit, what the task's retry policy
    says (decided here, in the parent, from the envelope and the registry alone)."""
    if done.error is None:
        report: Report = done.value
    elif done.error.cause == "cancelled":
        report = cancelled_report(entry, secret)
    else:
        error = (done.error.type_name, done.error.message, done.error.traceback)
        report = runner.run_lost(entry, error, secret)
        log_task(entry, "hard-killed at its time limit" if done.error.cause == "timeout"
                 else "lost", done.error.message)
    if report.kind == "dead":  # rejected in the pool process (e.g. a bad signature)
        log_task(entry, "dead-lettered", report.extra.decode(errors="replace"))
    return report
