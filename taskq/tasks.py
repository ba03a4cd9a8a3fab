"""Built-in tasks: the tutorial's prime counting, and small tools for trying a setup.

Registered only on a worker started with no ``--import`` (``taskq run``, the quickstart)
or with ``--import taskq.tasks`` (see :func:`taskq.registry.builtins_wanted`), each with
a time limit: a production worker runs only what its operator imported."""

from __future__ import annotations

import math
import time
from typing import Any

from taskq.registry import task

DEMO_LIMIT = 600.0
"""Seconds a demo task that may be slow (``primes``, ``sleep``) may run."""
QUICK_LIMIT = 60.0
"""Seconds the instant demo tasks (``echo``, ``fail``) may run (``noop`` does nothing)."""


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    return all(n % i for i in range(3, math.isqrt(n) + 1, 2))


@task(name="primes", split_range=True, reduce="sum", timeout=DEMO_LIMIT)
def primes(start: int, end: int) -> int:
    """How many primes lie in ``[start, end)``."""
    return sum(1 for n in range(start, end) if is_prime(n))


@task(name="noop")
def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing: measures the queue's own overhead."""
    return None


@task(name="echo", timeout=QUICK_LIMIT)
def echo(value: Any) -> Any:
    """Return the argument unchanged."""
    return value


@task(name="sleep", timeout=DEMO_LIMIT)
def sleep(seconds: float) -> float:
    """Sleep, then return the seconds slept (a stand-in for slow work)."""
    time.sleep(seconds)
    return seconds


@task(name="fail", timeout=QUICK_LIMIT)
def fail(message: str = "requested failure") -> None:
    """Raise RuntimeError(message): shows how a task's error comes back."""
    raise RuntimeError(message)
