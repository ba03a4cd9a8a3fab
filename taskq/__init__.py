"""taskq: ProcessPoolExecutor and multiprocessing.Pool, across many machines, over Redis."""

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

__all__ = [
    "Batch",
    "BatchStatus",
    "BrokerError",
    "Client",
    "ConfigError",
    "DeadLetteredError",
    "MessageError",
    "Settings",
    "SignatureError",
    "TaskError",
    "TaskTimeoutError",
    "TaskqError",
    "UnknownTaskError",
    "WorkerLostError",
    "task",
]
__version__ = "0.1.0"
