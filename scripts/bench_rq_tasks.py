"""RQ's job functions for scripts/bench.py.

RQ imports a job's function by dotted path in every work horse it forks, so these live
in a module with no imports beyond ``math``: RQ is not charged for importing taskq.
The prime test is a copy of ``taskq.tasks.is_prime``, so all three systems run the
same code.
"""

from __future__ import annotations

import math


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    return all(n % i for i in range(3, math.isqrt(n) + 1, 2))


def primes(start: int, end: int) -> int:
    """How many primes lie in ``[start, end)``."""
    return sum(1 for n in range(start, end) if is_prime(n))


def noop(*args: object, **kwargs: object) -> None:
    """Do nothing: measures the queue's own overhead."""
    return None
