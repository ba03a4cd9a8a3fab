"""rq's ``Queue`` over taskq: ``enqueue``/``enqueue_call``/``enqueue_many`` put taskq tasks
(task id = job id) on the taskq queue of the same name, for ``taskq worker`` nodes.

A call travels as every taskq call does (:mod:`taskq.client.calls`): a registered
``@taskq.task`` (given as the function, its registered name, or rq's dotted
``module.function`` path) by name with JSON arguments; anything else as a signed pickle,
which needs ``TASKQ_SECRET`` here and on the nodes. Options rq has and taskq cannot
honour raise NotImplementedError at the call, naming what to do instead; none is
silently dropped except the ones listed as accepted in the README's "Coming from RQ".
"""

from __future__ import annotations

import os
import re
import time
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import redis

from taskq import registry
from taskq.broker import Broker, Signed
from taskq.broker.rqcompat import RqJobs
from taskq.client import calls
from taskq.client.calls import CallOptions
from taskq.config import Settings
from taskq.errors import TaskqError
from taskq.message import TaskMessage
from taskq.outcome import describe_exception, encode_error, encode_ok
from taskq.rq.job import DuplicateJobError, Job, JobStatus, validate_job_id
from taskq.signing import SIGNED_TTL, sign

EnqueueData = namedtuple(
    "EnqueueData",
    ["func", "args", "kwargs", "timeout", "result_ttl", "ttl", "failure_ttl", "description",
     "depends_on", "job_id", "at_front", "meta", "retry", "on_success", "on_failure",
     "on_stopped", "repeat", "webhooks"],
)

_UNSUPPORTED = {
    "ttl": "taskq never discards a job for waiting too long; drop ttl=",
    "at_front": "a taskq queue is first in, first out; use a separate queue (and node) "
                "for urgent jobs",
    "on_success": "callbacks are not run; chain the work in the task itself",
    "on_failure": "callbacks are not run; handle the failure in the task or read job.exc_info",
    "on_stopped": "callbacks are not run",
    "repeat": "taskq has no repeated jobs; enqueue again",
    "rate_limit": "taskq has no rate limits; size the node with --procs",
    "webhooks": "taskq sends no webhooks",
    "pipeline": "taskq.rq writes each call in its own round trip; use enqueue_many to batch",
}
_PARSED = ("job_timeout", "description", "result_ttl", "ttl", "failure_ttl", "depends_on",
           "job_id", "at_front", "meta", "retry", "repeat", "on_success", "on_failure",
           "on_stopped", "rate_limit", "webhooks", "pipeline", "unique")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_timeout(value: Any) -> float | None:
    """rq's job_timeout: seconds (int/float, or text like ``'90'``, ``'10m'``, ``'1h'``);
    -1 or None leave the task's own time limit."""
    if value is None or value == -1:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", value.lower())
        if m is None:
            raise ValueError(f"timeout must be seconds or like '10m', '1h', got {value!r}")
        value = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)
    return calls.check_time_limit(value)


def task_name(fn: Callable[..., Any] | str) -> str:
    """The registered name of ``fn`` (a function, a name, or rq's ``module.function``);
    an unknown string is returned as it is (a node may know it)."""
    if not isinstance(fn, str):
        return registry.name_of(fn) if calls.registered(fn) else ""
    if registry.find_task(fn) is not None:
        return fn
    for name in registry.task_names():
        f = registry.get_task(name).fn
        if f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', '')}" == fn:
            return name
    return fn


class Queue:
    """rq's ``Queue(name, connection=, default_timeout=, is_async=)`` on taskq."""

    DEFAULT_TIMEOUT: float | None = None
    """rq's is 180 s; here a job's limit is its job_timeout, else the task's own."""

    def __init__(self, name: str = "default", connection: redis.Redis | None = None,
                 default_timeout: Any = None, is_async: bool = True, job_class: Any = None,
                 serializer: Any = None, **kwargs: Any) -> None:
        if connection is None:
            raise TypeError("Queue() missing 1 required argument: 'connection'")
        if job_class is not None:
            raise NotImplementedError("taskq.rq.Queue(job_class=): custom Job classes are not supported")
        if kwargs:
            raise TypeError(f"Queue() got unexpected arguments: {', '.join(sorted(kwargs))}")
        self.connection = connection
        self.name = name
        self.broker = Broker(connection, name)
        self.rq_jobs = RqJobs(self.broker)
        self._default_timeout = parse_timeout(default_timeout)
        self._is_async = is_async
        self.serializer = serializer  # accepted: taskq's wire is JSON (or signed pickle) anyway
        self.settings = Settings.from_env()
        self._context: Any = None
        self._group_ready = False

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return True

    @property
    def is_async(self) -> bool:
        return self._is_async

    # -- reading ------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Jobs waiting (in the stream, not claimed by a node)."""
        return self.rq_jobs.queued_count()

    def get_job_ids(self, offset: int = 0, length: int = -1) -> list[str]:
        return [] if length == 0 else self.rq_jobs.queued_ids(offset, length)

    @property
    def job_ids(self) -> list[str]:
        return self.get_job_ids()

    @property
    def jobs(self) -> list[Job]:
        return [j for j in (self.fetch_job(i) for i in self.job_ids) if j is not None]

    def is_empty(self) -> bool:
        return self.count == 0

    def fetch_job(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, self.connection, queue=self.name)
        except (TaskqError, ValueError):
            return None

    # -- enqueueing ---------------------------------------------------------------------

    def enqueue(self, f: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """rq's ``enqueue(f, *args, job_timeout=, job_id=, ..., **kwargs)``."""
        options = {k: kwargs.pop(k) for k in _PARSED if k in kwargs}
        if "args" in kwargs or "kwargs" in kwargs:
            if args:
                raise TypeError("give positional arguments or args=/kwargs=, not both")
            args = tuple(kwargs.pop("args", None) or ())
            kwargs = dict(kwargs.pop("kwargs", None) or {})
        options["timeout"] = options.pop("job_timeout", None)
        return self.enqueue_call(f, args, kwargs, **options)

    def enqueue_call(self, func: Callable[..., Any] | str, args: Sequence[Any] | None = None,
                     kwargs: dict[str, Any] | None = None, timeout: Any = None,
                     result_ttl: int | None = None, failure_ttl: int | None = None,
                     description: str | None = None, depends_on: Any = None,
                     job_id: str | None = None, meta: dict[str, Any] | None = None,
                     retry: Any = None, unique: bool = False, **rest: Any) -> Job:
        """rq's ``enqueue_call``; the options taskq cannot honour raise NotImplementedError."""
        data = EnqueueData(func, args, kwargs, timeout, result_ttl, rest.pop("ttl", None),
                           failure_ttl, description, depends_on, job_id,
                           rest.pop("at_front", False), meta, retry, rest.pop("on_success", None),
                           rest.pop("on_failure", None), rest.pop("on_stopped", None),
                           rest.pop("repeat", None), rest.pop("webhooks", None))
        _refuse(rest)
        if unique and not job_id:
            raise ValueError("unique=True requires an explicit job_id")
        job, msg = self._prepare(data)
        if not self._is_async:
            return self._run_here(job, msg)
        if not self._send([(job, msg)], only_new=unique)[0]:
            raise DuplicateJobError(f"Job ID {job.id} already exists")
        return job

    @staticmethod
    def prepare_data(func: Callable[..., Any] | str, args: Sequence[Any] | None = None,
                     kwargs: dict[str, Any] | None = None, timeout: Any = None,
                     result_ttl: int | None = None, ttl: int | None = None,
                     failure_ttl: int | None = None, description: str | None = None,
                     depends_on: Any = None, job_id: str | None = None, at_front: bool = False,
                     meta: dict[str, Any] | None = None, retry: Any = None,
                     on_success: Any = None, on_failure: Any = None, on_stopped: Any = None,
                     repeat: Any = None, webhooks: Any = None) -> EnqueueData:
        """rq's ``Queue.prepare_data``: one call for :meth:`enqueue_many`."""
        return EnqueueData(func, args, kwargs, timeout, result_ttl, ttl, failure_ttl,
                           description, depends_on, job_id, at_front, meta, retry, on_success,
                           on_failure, on_stopped, repeat, webhooks)

    def enqueue_many(self, job_datas: Iterable[EnqueueData], pipeline: Any = None,
                     group_id: str | None = None) -> list[Job]:
        """Many jobs in one round trip (one script call: each job atomic)."""
        _refuse({"pipeline": pipeline, "group_id": group_id})
        prepared = [self._prepare(d) for d in job_datas]
        ids = [job.id for job, _ in prepared]
        if len(set(ids)) != len(ids):
            raise ValueError("a job id appears more than once in enqueue_many()")
        if not self._is_async:
            return [self._run_here(job, msg) for job, msg in prepared]
        self._send(prepared)
        return [job for job, _ in prepared]

    def enqueue_in(self, time_delta: timedelta, func: Any, *args: Any, **kwargs: Any) -> Job:
        raise NotImplementedError(
            "taskq.rq: enqueue_in needs delayed tasks, which taskq does not have yet; "
            "enqueue now, or run a scheduler (cron) that enqueues at the time")

    def enqueue_at(self, datetime: datetime, func: Any, *args: Any, **kwargs: Any) -> Job:
        raise NotImplementedError(
            "taskq.rq: enqueue_at needs delayed tasks, which taskq does not have yet; "
            "enqueue now, or run a scheduler (cron) that enqueues at the time")

    # -- building and sending -----------------------------------------------------------

    def _prepare(self, data: EnqueueData) -> tuple[Job, TaskMessage]:
        """The Job handle and the taskq message of one rq call (raises for what taskq
        cannot honour, before anything is sent)."""
        _refuse({"ttl": data.ttl, "at_front": data.at_front, "on_success": data.on_success,
                 "on_failure": data.on_failure, "on_stopped": data.on_stopped,
                 "repeat": data.repeat, "webhooks": data.webhooks})
        _check_dependencies(data.depends_on, self.connection)
        job_id = validate_job_id(data.job_id) if data.job_id is not None else os.urandom(16).hex()
        fn = data.func
        name = task_name(fn)
        if isinstance(fn, str):
            fn = name
        args, kwargs = list(data.args or ()), dict(data.kwargs or {})
        secret = self.settings.secret
        time_limit = parse_timeout(data.timeout)
        if time_limit is None:
            time_limit = self._default_timeout
        options = CallOptions(time_limit=time_limit, keep_result=data.result_ttl != 0,
                              reply=False, task_id=job_id)
        pickled, spec = calls.route(fn, args, kwargs, has_secret=secret is not None)
        _check_retry(data.retry, spec, name)
        if pickled:
            assert not isinstance(fn, str)
            msg = calls.pickled(spec, fn, args, kwargs, job_id, None, options, False, True,
                                self._pickling_context())
        else:
            msg = calls.by_name(spec, fn, args, kwargs, job_id, None, options, False, True)
        job = Job(job_id, self.connection, origin=self.name, func_name=msg.task, args=args,
                  kwargs=kwargs, timeout=time_limit, description=data.description,
                  meta=data.meta, enqueued_at=datetime.now(timezone.utc), secret=secret)
        return job._attach(self), msg

    def _pickling_context(self) -> Any:
        if self._context is None:
            from taskq import signed

            self._context = signed.Context(f"rq-{os.urandom(6).hex()}")
        return self._context

    def _send(self, prepared: Sequence[tuple[Job, TaskMessage]], only_new: bool = False) -> list[bool]:
        if not self._group_ready:
            self.broker.ensure_group()
            self._group_ready = True
        jobs = [(job.id, msg.task, envelope(msg, self.name, self.settings.secret))
                for job, msg in prepared]
        return self.rq_jobs.enqueue(jobs, only_new=only_new)

    def _run_here(self, job: Job, msg: TaskMessage) -> Job:
        """``is_async=False``: run the call in this process now, as rq does, and store its
        outcome where a node would (JSON values only; else the Job keeps it in memory)."""
        spec = registry.find_task(msg.task)
        fn = spec.fn if spec is not None else None
        if fn is None:
            raise NotImplementedError(f"is_async=False: {msg.task!r} is not a registered task "
                                      "in this process (import its module)")
        try:  # a value JSON cannot carry fails the job, as it would on a node
            outcome = encode_ok(job.id, fn(*job.args, **job.kwargs))
        except Exception as exc:
            outcome = encode_error(job.id, describe_exception(exc))
        self.rq_jobs.store_outcome(job.id, msg.task, outcome, self.settings.result_ttl)
        job.get_status()
        return job


def envelope(msg: TaskMessage, queue: str, secret: bytes | None) -> Signed:
    """The stream entry of ``msg``, as :class:`taskq.Client` writes it: with a secret,
    signed for ``queue`` with an expiry; without one, plain."""
    if secret is None:
        return msg.encode(), None
    body = msg.encode(time.time() + SIGNED_TTL)
    return body, sign(secret, queue, body)


def _refuse(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if value not in (None, False):
            why = _UNSUPPORTED.get(key, "not supported")
            raise NotImplementedError(f"taskq.rq: {key}= is not supported: {why}")


def _check_retry(retry: Any, spec: registry.TaskSpec | None, name: str) -> None:
    """rq's per-job Retry is honoured when the task's registered policy is the same
    number of retries (nodes retry by the registered policy, with its backoff)."""
    if retry is None:
        return
    wanted = int(retry.max)
    have = spec.retries if spec is not None else 0
    if wanted != have:
        label = spec.name if spec is not None else name or "this callable"
        raise NotImplementedError(
            f"taskq.rq: retry=Retry(max={wanted}) but {label} is registered with retries={have}; "
            f"taskq retries by the task's policy: declare @taskq.task(retries={wanted}, "
            "retry_backoff=SECONDS) on it")


def _check_dependencies(depends_on: Any, connection: redis.Redis) -> None:
    """``depends_on`` is honoured when every dependency has already finished (the job
    can run now); otherwise taskq, which has no job dependencies, refuses it."""
    if depends_on is None:
        return
    deps = depends_on if isinstance(depends_on, (list, tuple)) else [depends_on]
    for dep in deps:
        if isinstance(dep, Job):
            job = dep
        elif isinstance(dep, str):
            job = Job.fetch(dep, connection)
        else:
            raise NotImplementedError("taskq.rq: depends_on= takes Jobs or job ids (no rq Dependency)")
        status = job.get_status()
        if status != JobStatus.FINISHED:
            raise NotImplementedError(
                f"taskq.rq: depends_on job {job.id}, which is {status.value if status else 'unknown'}: "
                "taskq has no job dependencies; wait for it (job.latest_result(timeout=...)) "
                "and enqueue afterwards")

