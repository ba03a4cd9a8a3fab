"""rq's ``Job`` (and ``JobStatus``, ``Result``, ``Retry``) over taskq's stored outcomes.

A Job is a handle: its state is read from Redis on each ``get_status()`` (see
:mod:`taskq.broker.rqcompat` for the bounded lookup), its result from the task's result
key. A pickled result (an unregistered callable sent signed) is verified with
``TASKQ_SECRET`` before it is unpickled, as everywhere in taskq.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

import redis

from taskq.broker import Broker
from taskq.broker.rqcompat import RqJobs, origin
from taskq.config import Settings
from taskq.errors import TaskqError
from taskq.outcome import decode_outcome

if TYPE_CHECKING:
    from taskq.rq.queue import Queue


class NoSuchJobError(TaskqError):
    """rq's error for a job id Redis knows nothing about (never queued, or expired)."""


class InvalidJobOperation(TaskqError):
    """rq's error for an operation the job's state does not allow (cancel a running job)."""


class DuplicateJobError(TaskqError):
    """rq's error for ``unique=True`` with a job id that already exists."""


class JobStatus(str, Enum):
    """rq's statuses; the ones taskq reports are queued, started, scheduled (a retry in
    backoff), finished, failed and canceled."""

    CREATED = "created"
    QUEUED = "queued"
    FINISHED = "finished"
    FAILED = "failed"
    STARTED = "started"
    DEFERRED = "deferred"
    SCHEDULED = "scheduled"
    STOPPED = "stopped"
    CANCELED = "canceled"


_JOB_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_job_id(job_id: str) -> str:
    """rq's rule (letters, digits, ``_`` and ``-``): it also keeps ids glob- and JSON-safe."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(f"job id {job_id!r}: only letters, digits, '_' and '-' are allowed")
    return job_id


class Retry:
    """rq's ``Retry(max, interval)``. taskq retries by the task's registered policy
    (``@taskq.task(retries=, retry_backoff=)``): ``max`` must equal its ``retries``."""

    def __init__(self, max: int, interval: int | Iterable[int] = 0) -> None:
        if max < 1:
            raise ValueError("max: please enter a value greater than 0")
        intervals = [interval] if isinstance(interval, int) else list(interval)
        if any(i < 0 for i in intervals):
            raise ValueError("interval: negative numbers are not allowed")
        self.max = max
        self.intervals = intervals

    def __repr__(self) -> str:
        return f"Retry(max={self.max}, interval={self.intervals})"


@dataclass(frozen=True)
class Result:
    """rq's ``Result``: one execution's outcome (taskq keeps the latest only)."""

    class Type(IntEnum):
        SUCCESSFUL = 1
        FAILED = 2
        STOPPED = 3
        RETRIED = 4

    job_id: str
    type: Result.Type
    return_value: Any = None
    exc_string: str | None = None
    created_at: datetime | None = None


def result_of(job_id: str, raw: bytes, secret: bytes | None) -> Result:
    """A stored outcome as rq's Result (a pickled one verified before it is loaded)."""
    outcome = decode_outcome(raw, secret)
    if outcome.ok:
        return Result(job_id, Result.Type.SUCCESSFUL, outcome.value)
    kind, message, tb = outcome.error or ("TaskError", "unknown error", "")
    return Result(job_id, Result.Type.FAILED, exc_string=tb or f"{kind}: {message}")


class Job:
    """A job enqueued through :class:`taskq.rq.Queue` (or imported from rq)."""

    def __init__(self, id: str, connection: redis.Redis, *, origin: str,
                 func_name: str | None = None, args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                 description: str | None = None, meta: dict[str, Any] | None = None,
                 enqueued_at: datetime | None = None, secret: bytes | None = None) -> None:
        self.id = validate_job_id(id)
        self.connection = connection
        self.origin = origin
        self.func_name = func_name
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.timeout = timeout
        self.description = description
        self.meta = dict(meta or {})
        self.enqueued_at = enqueued_at
        self._secret = secret
        self._status: JobStatus | None = JobStatus.QUEUED
        self._cached: Result | None = None
        self._jobs: RqJobs | None = None

    def __repr__(self) -> str:
        return f"Job({self.id!r}, origin={self.origin!r}, func={self.func_name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def rq_jobs(self) -> RqJobs:
        if self._jobs is None:
            self._jobs = RqJobs(Broker(self.connection, self.origin))
        return self._jobs

    @classmethod
    def fetch(cls, id: str, connection: redis.Redis | None = None,
              serializer: Any = None, *, queue: str | None = None) -> Job:
        """The job ``id`` (its queue is looked up; or give ``queue=``). ``serializer`` is
        accepted for rq's signature: taskq's wire is JSON (or signed pickle) regardless.
        Raises NoSuchJobError for an id taskq does not know (or whose records expired)."""
        if connection is None:
            raise TypeError("Job.fetch() needs connection= (a redis.Redis)")
        validate_job_id(id)
        name = queue or origin(connection, id)
        if name is None:
            raise NoSuchJobError(f"No such job: {id}")
        job = cls(id, connection, origin=name, secret=Settings.from_env().secret)
        record = job.rq_jobs.record(id)
        if not record and job.rq_jobs.broker.result(id) is None:
            raise NoSuchJobError(f"No such job: {id}")
        func = record.get(b"func")
        job.func_name = func.decode() if func else None
        at = record.get(b"at")
        if at:
            job.enqueued_at = datetime.fromtimestamp(float(at), timezone.utc)
        job.get_status()
        return job

    def refresh(self) -> None:
        self._cached = None
        self.get_status()

    # -- state --------------------------------------------------------------------------

    def get_status(self, refresh: bool = True) -> JobStatus | None:
        """The job's status read from Redis now (None: unknown or expired, as in rq)."""
        if not refresh:
            return self._status
        status, raw = self.rq_jobs.state(self.id)
        self._status = JobStatus(status) if status is not None else None
        if raw is not None:
            self._cached = result_of(self.id, raw, self._secret)
        return self._status

    @property
    def is_finished(self) -> bool:
        return self.get_status() == JobStatus.FINISHED

    @property
    def is_failed(self) -> bool:
        return self.get_status() == JobStatus.FAILED

    @property
    def is_queued(self) -> bool:
        return self.get_status() == JobStatus.QUEUED

    @property
    def is_started(self) -> bool:
        return self.get_status() == JobStatus.STARTED

    @property
    def is_scheduled(self) -> bool:
        return self.get_status() == JobStatus.SCHEDULED

    @property
    def is_canceled(self) -> bool:
        return self.get_status() == JobStatus.CANCELED

    @property
    def is_deferred(self) -> bool:
        return False  # taskq has no dependencies: a job is never waiting on another

    # -- results ------------------------------------------------------------------------

    def latest_result(self, timeout: float = 0) -> Result | None:
        """The job's outcome, or None if it has none (yet). ``timeout`` > 0 waits up to
        that many seconds for one (polling the result key; taskq pushes results only to
        the producer that asked for a reply, and an rq job has none)."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            raw = self.rq_jobs.broker.result(self.id)
            if raw is not None:
                self._cached = result_of(self.id, raw, self._secret)
                return self._cached
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))  # nothing to wait on: the result key is all there is
            pause = min(pause * 2, 0.05)

    def return_value(self, refresh: bool = False) -> Any:
        """The return value if the job finished successfully, else None."""
        if refresh or self._cached is None:
            self._cached = self.latest_result()
        if self._cached is not None and self._cached.type == Result.Type.SUCCESSFUL:
            return self._cached.return_value
        return None

    @property
    def result(self) -> Any:
        """rq's deprecated alias of :meth:`return_value`."""
        return self.return_value()

    @property
    def exc_info(self) -> str | None:
        """The failed execution's traceback text (None if it has not failed)."""
        if self._cached is None:
            self._cached = self.latest_result()
        if self._cached is not None and self._cached.type == Result.Type.FAILED:
            return self._cached.exc_string
        return None

    # -- changes ------------------------------------------------------------------------

    def cancel(self) -> None:
        """Take the job out of its queue (or out of its retry backoff) so it never runs.
        A job a node has claimed cannot be stopped yet (InvalidJobOperation), nor one that
        has finished or failed."""
        outcome = self.rq_jobs.cancel(self.id)
        if outcome == "started":
            raise InvalidJobOperation(
                f"job {self.id} has started on a taskq node: taskq cannot stop a running task yet")
        if outcome == "gone":
            status = self.get_status()
            if status == JobStatus.CANCELED:
                raise InvalidJobOperation(f"Cannot cancel already canceled job: {self.id}")
            raise InvalidJobOperation(f"job {self.id} is {status.value if status else 'unknown'}: "
                                      "only a queued or scheduled job can be canceled")
        self._status = JobStatus.CANCELED

    def _attach(self, queue: Queue) -> Job:
        self._jobs = queue.rq_jobs
        return self
