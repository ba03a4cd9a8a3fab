"""The broker: every Redis key (:mod:`.keys`) and every Redis call of taskq, with the
queue's Lua scripts beside them (``lua/``). Producers and nodes talk to Redis only
through here; nothing here decodes a task.

:mod:`.connection` URLs to clients (single server, Cluster, Sentinel), :mod:`.cluster`
Cluster specifics, :mod:`.queue` one queue's operations, :mod:`.claim` / :mod:`.blocking`
the node's outstanding blocking reads, :mod:`.control` per-node control streams,
:mod:`.nodes` heartbeats, :mod:`.schedule` delayed / periodic / deduplicated enqueues,
:mod:`.snapshot` the dashboard's bounded reads, :mod:`.rqcompat` taskq.rq's records.
"""

from taskq.broker.claim import Claim
from taskq.broker.connection import REDIS_DOWN, connect, connection_pool, unreachable
from taskq.broker.keys import GROUP, NODES_KEY, QUEUES_KEY, SHARED_PREFIX, QueueKeys, node_key
from taskq.broker.nodes import all_queues, heartbeat, live_nodes, procs_serving, remove_node
from taskq.broker.queue import Broker, Signed, load_script

__all__ = [
    "GROUP",
    "NODES_KEY",
    "QUEUES_KEY",
    "REDIS_DOWN",
    "SHARED_PREFIX",
    "Broker",
    "Claim",
    "QueueKeys",
    "Signed",
    "all_queues",
    "connect",
    "connection_pool",
    "heartbeat",
    "live_nodes",
    "load_script",
    "node_key",
    "procs_serving",
    "remove_node",
    "unreachable",
]
