"""Built-in tasks: the tutorial's prime counting, and small tools for trying a setup."""

from __future__ import annotations

import math
import time
from typing import Any

from taskq.registry import task


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    return all(n % i for i in range(3, math.isqrt(n) + 1, 2))


@task(name="primes", split_range=True, reduce="sum")
def primes(start: int, end: int) -> int:
    """How many primes lie in ``[start, end)``."""
    return sum(1 for n in range(start, end) if is_prime(n))


@task(name="noop")
def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing: measures the queue's own overhead."""
    return None


@task(name="echo")
def echo(value: Any) -> Any:
    """Return the argument unchanged."""
    return value


@task(name="sleep")
def sleep(seconds: float) -> float:
    """Sleep, then return the seconds slept (a stand-in for slow work)."""
    time.sleep(seconds)
    return seconds


@task(name="fail")
def fail(message: str = "requested failure") -> None:
    """Raise RuntimeError(message): shows how a task's error comes back."""
    raise RuntimeError(message)
