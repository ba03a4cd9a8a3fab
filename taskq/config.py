"""Settings shared by the CLI, the worker node and the producer API.

Defaults can be overridden from the environment (``TASKQ_URL``, ``TASKQ_QUEUE``,
``TASKQ_PROCS``, ``TASKQ_BATCH``, ``TASKQ_LEASE``, ``TASKQ_RESULT_TTL``,
``TASKQ_SECRET``) and then by explicit arguments or CLI options.
Durations are float seconds here; they are converted at the Redis boundary.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from taskq.errors import ConfigError

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "default"
T = TypeVar("T", int, float)


def _env_number(name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        kind = "whole number" if cast is int else "number"
        raise ConfigError(f"{name}={raw!r} is not a {kind}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a node or a producer needs to know, in one immutable value."""

    url: str = DEFAULT_URL
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    procs: int = field(default_factory=lambda: os.cpu_count() or 1)
    batch: int = 256
    """Most tasks claimed by one Redis call."""
    lease: float = 30.0
    """Seconds a claimed task stays owned without a renewal before other nodes reclaim it."""
    result_ttl: float = 24 * 3600.0
    """Seconds a task's result stays readable in Redis."""
    max_deliveries: int = 5
    """Deliveries after which a task that keeps losing its node is dead-lettered."""
    shutdown_timeout: float = 30.0
    """Seconds a graceful shutdown waits for running tasks."""
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    """Bytes of resident memory after which a pool process is replaced."""
    hard_timeout_grace: float = 5.0
    """Seconds past a task's soft timeout before its process is killed."""
    max_message_bytes: int = 16 * 1024 * 1024
    secret: bytes | None = None

    def __post_init__(self) -> None:
        if self.procs < 1:
            raise ConfigError(f"procs must be at least 1, got {self.procs}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        if self.lease < 1:
            raise ConfigError(f"lease must be at least 1 second, got {self.lease}")
        if self.max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if self.hard_timeout_grace < 0:
            raise ConfigError(f"hard_timeout_grace must be >= 0, got {self.hard_timeout_grace}")
        if not self.queues:
            raise ConfigError("at least one queue is needed")
        for q in self.queues:
            validate_queue_name(q)
        validate_url(self.url)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``TASKQ_*`` variables, then the non-None ``overrides``."""
        secret = os.environ.get("TASKQ_SECRET")
        queue_env = os.environ.get("TASKQ_QUEUE")
        base: dict[str, Any] = {
            "url": os.environ.get("TASKQ_URL") or DEFAULT_URL,
            "queues": tuple(q for q in queue_env.split(",") if q) if queue_env else (DEFAULT_QUEUE,),
            "procs": _env_number("TASKQ_PROCS", os.cpu_count() or 1, int),
            "batch": _env_number("TASKQ_BATCH", 256, int),
            "lease": _env_number("TASKQ_LEASE", 30.0, float),
            "result_ttl": _env_number("TASKQ_RESULT_TTL", 24 * 3600.0, float),
            "secret": secret.encode() if secret else None,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def validate_queue_name(name: str) -> str:
    """Queue names become part of Redis keys and hash tags: keep them plain."""
    if not name or len(name) > 100 or any(c in name for c in "{}: \t\r\n"):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-100 characters without spaces, ':', '{{' or '}}'"
        )
    return name


def validate_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"invalid Redis URL {url!r}: expected redis://host:port/db, rediss://… or unix://path"
        )
    return url
