"""taskq: ProcessPoolExecutor and multiprocessing.Pool, across many machines, over Redis."""

import importlib
from typing import TYPE_CHECKING, Any

from taskq.config import Settings
from taskq.errors import (
    BrokerError,
    ConfigError,
    DeadLetteredError,
    MessageError,
    SignatureError,
    TaskError,
    TaskLostError,
    TaskqError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
)
from taskq.periodic import periodic, schedule  # eager: binds the names over the submodule
from taskq.registry import task

if TYPE_CHECKING:
    from concurrent.futures import as_completed, wait
    from multiprocessing import TimeoutError

    from taskq.client import Batch, BatchStatus, Client
    from taskq.client.aio import AsyncClient
    from taskq.compat.futures import Executor
    from taskq.compat.futures import Executor as ProcessPoolExecutor
    from taskq.compat.pool import AsyncResult, Pool
    from taskq.compat.process import Process, cpu_count
    from taskq.compat.shared import Lock, Value
    from taskq.local.cluster import LocalCluster
    from taskq.node.child import progress
    from taskq.node.context import current_task

# What is imported eagerly above is what task modules use (@task, @periodic, the errors)
# and needs no Redis client. Everything else loads on first use: `python -m taskq worker`
# imports this package too, and a node never needs the producer side (Client and its
# reply listener, the Executor/Pool side that loads cloudpickle, redis.asyncio).
# A lazy name must not be the name of a submodule of taskq: importing the submodule
# would bind it over the name (hence periodic, above, stays eager).
_LAZY = {
    "Client": ("taskq.client", "Client"),
    "Batch": ("taskq.client", "Batch"),
    "BatchStatus": ("taskq.client", "BatchStatus"),
    "AsyncClient": ("taskq.client.aio", "AsyncClient"),  # loads redis.asyncio
    "progress": ("taskq.node.child", "progress"),
    "current_task": ("taskq.node.context", "current_task"),
    "Executor": ("taskq.compat.futures", "Executor"),
    "ProcessPoolExecutor": ("taskq.compat.futures", "Executor"),
    "LocalCluster": ("taskq.local.cluster", "LocalCluster"),
    "Pool": ("taskq.compat.pool", "Pool"),
    "AsyncResult": ("taskq.compat.pool", "AsyncResult"),
    "Process": ("taskq.compat.process", "Process"),
    "cpu_count": ("taskq.compat.process", "cpu_count"),
    "Lock": ("taskq.compat.shared", "Lock"),
    "Value": ("taskq.compat.shared", "Value"),
    "as_completed": ("concurrent.futures", "as_completed"),
    "wait": ("concurrent.futures", "wait"),
    "TimeoutError": ("multiprocessing", "TimeoutError"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'taskq' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AsyncClient",
    "AsyncResult",
    "Batch",
    "BatchStatus",
    "BrokerError",
    "Client",
    "ConfigError",
    "DeadLetteredError",
    "Executor",
    "LocalCluster",
    "Lock",
    "MessageError",
    "Pool",
    "Process",
    "ProcessPoolExecutor",
    "Settings",
    "SignatureError",
    "TaskError",
    "TaskLostError",
    "TaskTimeoutError",
    "TaskqError",
    "TimeoutError",
    "UnknownTaskError",
    "Value",
    "WorkerLostError",
    "as_completed",
    "cpu_count",
    "current_task",
    "periodic",
    "progress",
    "schedule",
    "task",
    "wait",
]
__version__ = "0.1.0"
