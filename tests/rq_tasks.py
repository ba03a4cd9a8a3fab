"""Task functions for tests/test_rq.py: registered taskq tasks that rq can run as well
(``@taskq.task`` returns the function unchanged, so rq imports and calls it as usual)."""

from __future__ import annotations

import os
import time

import taskq


@taskq.task
def count_primes(start: int, end: int) -> int:
    return sum(1 for n in range(max(start, 2), end) if all(n % d for d in range(2, int(n**0.5) + 1)))


@taskq.task
def add(a: int, b: int = 0) -> int:
    return a + b


@taskq.task
def fail(message: str) -> None:
    raise ValueError(message)


@taskq.task(retries=1, retry_backoff=0.01)
def flaky(path: str) -> str:
    """Fails on its first run (leaving ``path`` behind), succeeds on the retry."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return "second attempt"


@taskq.task(retries=1, retry_backoff=60.0)
def fail_then_wait(message: str) -> None:
    """Fails; its one retry waits out a minute of backoff (the job is scheduled)."""
    raise ValueError(message)


@taskq.task
def wait_for(path: str, limit: float = 30.0) -> str:
    """Runs until ``path`` exists (the test creates it once it has seen 'started')."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"


def not_registered(x: int) -> int:
    """A plain function: rq can run it, taskq has no task by this name."""
    return x


def touch(path: str) -> str:
    open(path, "w").close()
    return path


class Canary:
    """Unpickling this creates ``path``: proof that a pickled rq job was never loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (touch, (self.path,))
