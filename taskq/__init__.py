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
    TaskqError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
)
from taskq.registry import task

if TYPE_CHECKING:
    from concurrent.futures import as_completed, wait
    from multiprocessing import TimeoutError

    from taskq.executor import Executor
    from taskq.executor import Executor as ProcessPoolExecutor
    from taskq.local import LocalCluster
    from taskq.mpool import AsyncResult, Pool
    from taskq.process import Process, cpu_count
    from taskq.shared import Lock, Value

# The Executor/Pool side loads cloudpickle: imported on first use, so `import taskq` on
# a worker node (JSON tasks only) stays light.
_LAZY = {
    "Executor": ("taskq.executor", "Executor"),
    "ProcessPoolExecutor": ("taskq.executor", "Executor"),
    "LocalCluster": ("taskq.local", "LocalCluster"),
    "Pool": ("taskq.mpool", "Pool"),
    "AsyncResult": ("taskq.mpool", "AsyncResult"),
    "Process": ("taskq.process", "Process"),
    "cpu_count": ("taskq.process", "cpu_count"),
    "Lock": ("taskq.shared", "Lock"),
    "Value": ("taskq.shared", "Value"),
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
    "TaskTimeoutError",
    "TaskqError",
    "TimeoutError",
    "UnknownTaskError",
    "Value",
    "WorkerLostError",
    "as_completed",
    "cpu_count",
    "task",
    "wait",
]
__version__ = "0.1.0"
