"""The tasks scripts/chaos.py runs, and the execution log it counts duplicates from.

Worker nodes import this module with ``--import chaos_tasks`` (``scripts/`` on
PYTHONPATH); tests/reliability_tasks.py re-exports it and adds the tasks only the tests
need (tests may use scripts, never the reverse). Every execution is recorded OUTSIDE
Redis: one line per event appended (O_APPEND, one write per line) to
``$TASKQ_REL_LOG/<pid>.log``, so how often each task really ran can be counted whatever
happened to Redis or to the processes.

Line format: ``<event> <token> <pid>`` with event ``run`` (a task started), ``end`` (it
returned), ``killnode`` (token: the node parent's pid) or ``init`` (a pool process ran its
initializer; token ``-``).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from taskq import task


def record(event: str, token: str) -> None:
    directory = os.environ.get("TASKQ_REL_LOG")
    if not directory:
        return
    fd = os.open(os.path.join(directory, f"{os.getpid()}.log"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {token} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def read_log(directory: str | Path, event: str = "run") -> Counter[str]:
    """How many times each token had ``event`` recorded, over every process's file."""
    counts: Counter[str] = Counter()
    for path in Path(directory).glob("*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == event:
                counts[parts[1]] += 1
    return counts


@task(name="rel.work", retries=3, retry_backoff=0.05)
def work(token: str, seconds: float = 0.0) -> int:
    """The well-behaved task: record, optionally sleep, return the pid that ran it.

    ``retries`` covers WorkerLostError: a run whose pool process was SIGKILLed under it
    by the chaos script is retried, so every good task must end up completed."""
    record("run", token)
    if seconds:
        time.sleep(seconds)
    record("end", token)
    return os.getpid()


@task(name="rel.poison_child", retries=1, retry_backoff=0.01)
def poison_child(token: str) -> None:
    """os._exit() every time: fails with WorkerLostError after its one retry."""
    record("run", token)
    os._exit(7)


@task(name="rel.kill_node")
def kill_node(token: str) -> None:
    """Poison of the worst kind: SIGKILL the node parent (and so this process) every time."""
    record("run", token)
    record("killnode", str(os.getppid()))
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(10)
