"""``taskq rq import``: move the jobs waiting in rq queues onto the taskq queues of the
same names, read with rq's own API (``Queue.get_job_ids``, ``Job.fetch`` with rq's
``JSONSerializer``): rq's storage format is never re-implemented here.

Moved: jobs whose payload is JSON and whose function is a registered taskq task (by its
registered name or its ``module.function`` path). Left where they are, and reported
with the reason: a pickled job (rq's default serializer) -- it is never unpickled: the
serializer is told from the first byte of the job's ``data`` (rq's JSONSerializer writes
a JSON array, ``[func, instance, args, kwargs]``; pickle starts with ``\\x80``) -- and a
job whose function taskq does not know, or calls a method of an instance.

Nothing is lost or doubled when the import is interrupted at any point: each job is
queued on taskq (task id = rq job id) together with its taskq.rq record in one script,
which skips a job whose record exists; only after that write is acknowledged is the job
removed from rq (``Job.delete``, which takes it off its queue). A rerun after a kill
finds the job still in rq, sees the record, queues nothing and removes it from rq.
Stop the rq workers first: one that takes a job between the two steps runs it as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from taskq import registry
from taskq.broker import Broker
from taskq.broker.rqcompat import RqJobs
from taskq.client import calls
from taskq.client.calls import CallOptions
from taskq.errors import ConfigError
from taskq.message import TaskMessage
from taskq.rq.job import validate_job_id
from taskq.rq.queue import envelope, parse_timeout, task_name

BATCH = 200
"""Jobs per taskq write (one script call) and per rq removal (one pipeline)."""


@dataclass
class Report:
    """What an import did (or, with ``dry_run``, would do), job by job."""

    moved: list[tuple[str, str, str]] = field(default_factory=list)
    """(queue, job id, task) moved onto taskq (or, dry run, that would be)."""
    already: list[tuple[str, str]] = field(default_factory=list)
    """(queue, job id) found queued on taskq by an earlier, interrupted run: removed from rq."""
    left: list[tuple[str, str, str]] = field(default_factory=list)
    """(queue, job id, reason) left in rq untouched."""


def require_rq() -> Any:
    try:
        import rq
        import rq.exceptions
        import rq.serializers
    except ImportError:
        raise ConfigError("taskq rq import needs rq installed: pip install rq") from None
    return rq


def rq_queue_names(connection: redis.Redis) -> list[str]:
    """Every rq queue's name (rq's own registry of queues)."""
    rq = require_rq()
    return sorted(q.name for q in rq.Queue.all(connection=connection))


def _plan(job: Any) -> tuple[TaskMessage | None, str]:
    """The taskq message of an rq job read with the JSON serializer, or None and why not."""
    data = job.data  # raw bytes, decompressed: nothing has been deserialized yet
    if data.lstrip()[:1] != b"[":
        return None, "pickled payload (rq's default serializer): taskq never unpickles; " \
                     "re-enqueue it through taskq.rq"
    try:
        func_name, instance, args, kwargs = job.serializer.loads(data)
    except (ValueError, TypeError):
        return None, "payload is not rq's JSON [func, instance, args, kwargs]"
    if instance is not None:
        return None, "calls a method of an instance: taskq runs registered functions only"
    name = task_name(func_name) if isinstance(func_name, str) else ""
    spec = registry.find_task(name) if name else None
    if spec is None:
        return None, f"function {func_name!r} is not a registered taskq task (add --import MODULE)"
    try:
        time_limit = parse_timeout(job.timeout)
        options = CallOptions(time_limit=time_limit, reply=False, task_id=job.id)
        msg = calls.by_name(spec, spec.name, list(args or ()), dict(kwargs or {}), job.id, None,
                            options, False, True)
    except (TypeError, ValueError) as exc:
        return None, f"arguments do not fit {spec.name}: {exc}"
    return msg, ""


def import_queue(rq_conn: redis.Redis, taskq_conn: redis.Redis, name: str, *,
                 dry_run: bool = False, secret: bytes | None = None, report: Report | None = None,
                 on_job: Callable[[str, str, str], None] | None = None) -> Report:
    """Move rq queue ``name``'s movable jobs onto taskq queue ``name`` (see the module
    docstring). ``on_job(kind, job id, detail)`` is told of each job as it is handled
    (kind: moved | already | left)."""
    rq = require_rq()
    report = report if report is not None else Report()
    say = on_job or (lambda kind, job_id, detail: None)
    queue = rq.Queue(name, connection=rq_conn, serializer=rq.serializers.JSONSerializer)
    jobs = RqJobs(Broker(taskq_conn, name))
    if not dry_run:
        jobs.broker.ensure_group()
    ids = queue.get_job_ids()
    for start in range(0, len(ids), BATCH):
        batch: list[tuple[Any, TaskMessage]] = []
        for job_id in ids[start:start + BATCH]:
            item, why = _read(rq, rq_conn, job_id)
            if item is None:
                report.left.append((name, job_id, why))
                say("left", job_id, why)
            else:
                batch.append(item)
        if not batch:
            continue
        if dry_run:
            for _, msg in batch:
                report.moved.append((name, msg.id, msg.task))
                say("moved", msg.id, msg.task)
            continue
        queued = jobs.enqueue([(m.id, m.task, envelope(m, name, secret)) for _, m in batch],
                              only_new=True)
        _remove_from_rq(rq_conn, [job for job, _ in batch])  # only now: taskq has them
        for (_, msg), new in zip(batch, queued, strict=True):
            if new:
                report.moved.append((name, msg.id, msg.task))
                say("moved", msg.id, msg.task)
            else:
                report.already.append((name, msg.id))
                say("already", msg.id, msg.task)
    return report


def _read(rq: Any, rq_conn: redis.Redis, job_id: str) -> tuple[tuple[Any, TaskMessage] | None, str]:
    """``((rq job, message), "")`` for a movable job, else ``(None, reason)``."""
    try:
        validate_job_id(job_id)
    except ValueError as exc:
        return None, str(exc)
    try:
        job = rq.job.Job.fetch(job_id, connection=rq_conn,
                               serializer=rq.serializers.JSONSerializer)
    except rq.exceptions.NoSuchJobError:
        return None, "listed in the queue but its job hash is gone"
    msg, why = _plan(job)
    return ((job, msg), "") if msg is not None else (None, why)


def _remove_from_rq(rq_conn: redis.Redis, rq_jobs: Sequence[Any]) -> None:
    """rq's own delete: off its queue and its registries, its hash gone."""
    with rq_conn.pipeline() as pipe:
        for job in rq_jobs:
            job.delete(pipeline=pipe)
        pipe.execute()


def import_queues(rq_conn: redis.Redis, taskq_conn: redis.Redis, names: Iterable[str] | None,
                  **kwargs: Any) -> Report:
    """:func:`import_queue` for each of ``names`` (None: every rq queue)."""
    report = Report()
    for name in rq_queue_names(rq_conn) if names is None else names:
        import_queue(rq_conn, taskq_conn, name, report=report, **kwargs)
    return report
