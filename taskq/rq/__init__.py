"""rq's producer API over taskq: change ``from rq import Queue`` to
``from taskq.rq import Queue`` and the jobs run on ``taskq worker`` nodes.

What is covered and what is not (and why) is in the README, "Coming from RQ". The
backlog already in rq queues moves with ``taskq rq import`` (:mod:`taskq.rq.importer`).
This package does not need rq installed; only the importer does.
"""

from taskq.rq.job import (
    DuplicateJobError,
    InvalidJobOperation,
    Job,
    JobStatus,
    NoSuchJobError,
    Result,
    Retry,
)
from taskq.rq.queue import EnqueueData, Queue

__all__ = [
    "DuplicateJobError",
    "EnqueueData",
    "InvalidJobOperation",
    "Job",
    "JobStatus",
    "NoSuchJobError",
    "Queue",
    "Result",
    "Retry",
]
