"""taskq: ProcessPoolExecutor and multiprocessing.Pool, across many machines, over Redis."""

import importlib
from typing import TYPE_CHECKING, Any

from taskq.client import Batch, BatchStatus, Client
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
from taskq.node.child import progress
from taskq.periodic import periodic, schedule  # eager: binds the names over the submodule
from taskq.registry import task

if TYPE_CHECKING:
    from concurrent.futures import as_completed, wait
    from multiprocessing import TimeoutError

    from taskq.client.aio import AsyncClient
    from taskq.compat.futures import Executor
    from taskq.compat.futures import Executor as ProcessPoolExecutor
    from taskq.compat.pool import AsyncResult, Pool
    from taskq.compat.process import Process, cpu_count
    from taskq.compat.shared import Lock, Value
    from taskq.local.cluster import LocalCluster
    from taskq.node.context import current_task

# The Executor/Pool side loads cloudpickle: imported on first use, so `import taskq` on
# a worker node (JSON tasks only) stays light.
_LAZY = {
    "AsyncClient": ("taskq.client.aio", "AsyncClient"),  # loads redis.asyncio
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
