"""Periodic tasks: ``@taskq.periodic(cron, queue=...)`` and ``taskq.schedule(...)``.

They register a :class:`Schedule` in this process, like ``@task`` registers a task: a
node that imports the module (``taskq worker --import MODULE``) runs the scheduler
(:mod:`taskq.node.scheduler`) for every schedule it knows. Run on several nodes, one of
them holds the scheduler lease of a queue and the others are hot standbys; each run is
queued once, by name (JSON arguments), with the deterministic task id
``periodic:<schedule name>:<scheduled unix ms>``.

Cron expressions are croniter's, read in UTC: five fields (minute hour day month
weekday), or six with seconds last (``"* * * * * */10"``: every ten seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from taskq import registry
from taskq.config import validate_queue_name
from taskq.errors import ConfigError
from taskq.outcome import unfaithful

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Schedule:
    """One periodic task: ``task`` (a registered name) run with ``args``/``kwargs`` on
    ``queue`` (None: the node's first queue) at every time ``cron`` matches."""

    name: str
    task: str
    cron: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None

    def task_id(self, at_ms: int) -> str:
        """The id of the run scheduled at ``at_ms``: the same on every node."""
        return f"periodic:{self.name}:{at_ms}"

    def runs(self, after_ms: int, until_ms: int, most: int) -> list[int]:
        """Scheduled times (unix ms) after ``after_ms`` and not after ``until_ms``."""
        it = croniter(self.cron, _utc(after_ms))
        out: list[int] = []
        while len(out) < most:
            at = _ms(it.get_next(float))
            if at > until_ms:
                break
            out.append(at)
        return out

    def next_after(self, after_ms: int) -> int:
        return _ms(croniter(self.cron, _utc(after_ms)).get_next(float))

    def last_at_or_before(self, now_ms: int) -> int:
        """The latest scheduled time not after ``now_ms``."""
        return _ms(croniter(self.cron, _utc(now_ms + 1)).get_prev(float))


def croniter(cron: str, start: datetime | None = None) -> Any:
    """croniter, imported on first use: ``import taskq`` stays light."""
    from croniter import croniter as impl  # type: ignore[import-untyped]

    return impl(cron, start)


def _valid(cron: str) -> bool:
    from croniter import croniter as impl

    return bool(impl.is_valid(cron))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


_SCHEDULES: dict[str, Schedule] = {}


def schedule(task: Callable[..., Any] | str, cron: str, *, args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None, queue: str | None = None,
             name: str | None = None) -> Schedule:
    """Run ``task`` (a registered task or its name) at every time ``cron`` matches.
    The name (default ``<task name>@<cron>``) identifies the schedule across nodes and
    restarts: keep it when you change its arguments. ConfigError for a bad cron,
    queue or name; TypeError for arguments JSON would not carry or the task cannot take."""
    task_name = task if isinstance(task, str) else registry.name_of(task)
    if not isinstance(cron, str) or not _valid(cron):
        raise ConfigError(f"periodic task {task_name}: invalid cron expression {cron!r}")
    if queue is not None:
        validate_queue_name(queue)
    kwargs = dict(kwargs or {})
    unfaithful(args, kwargs, f"periodic task {task_name}")
    spec = registry.find_task(task_name)
    if spec is not None:
        registry.check_call(spec, list(args), kwargs)
    sched = Schedule(name or f"{task_name}@{cron}", task_name, cron, tuple(args), kwargs, queue)
    if not sched.name or "|" in sched.name:
        raise ConfigError(f"periodic task {task_name}: invalid schedule name {sched.name!r}")
    existing = _SCHEDULES.get(sched.name)
    if existing is not None and existing != sched:
        raise ConfigError(f"schedule {sched.name!r} is already registered differently")
    _SCHEDULES[sched.name] = sched
    return sched


def periodic(cron: str, *, queue: str | None = None, args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None, name: str | None = None
             ) -> Callable[[F], F]:
    """Decorator: ``@taskq.periodic("*/5 * * * *")`` on a function registers it as a
    task (if ``@taskq.task`` has not already) and schedules it (see :func:`schedule`)."""

    def register(fn: F) -> F:
        if not isinstance(getattr(fn, "__taskq_name__", None), str):
            fn = registry.task(fn)
        schedule(fn, cron, args=args, kwargs=kwargs, queue=queue, name=name)
        return fn

    return register


def schedules() -> list[Schedule]:
    """Every schedule registered in this process."""
    return list(_SCHEDULES.values())


def unschedule(name: str) -> bool:
    """Forget a schedule in this process (True if there was one)."""
    return _SCHEDULES.pop(name, None) is not None


__all__ = ["Schedule", "periodic", "schedule", "schedules", "unschedule"]
