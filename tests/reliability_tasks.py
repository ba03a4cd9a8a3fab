"""Tasks that misbehave on purpose, for tests/test_reliability.py and scripts/chaos.py.

Worker subprocesses import this module with ``--import reliability_tasks`` (``tests/`` on
PYTHONPATH). Every execution is recorded OUTSIDE Redis: one line per event appended
(O_APPEND, one write per line) to ``$TASKQ_REL_LOG/<pid>.log``, so the tests can count
how often each task really ran, whatever happened to Redis or to the processes.

Line format: ``<event> <token> <pid>`` with event ``run`` (a task started), ``end`` (it
returned) or ``init`` (a pool process ran its initializer; token ``-``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections import Counter
from pathlib import Path

from taskq import task
from taskq.errors import TaskTimeoutError

_hoard: list[bytes] = []


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


def init_child() -> None:
    """``--init`` for the tests: count initializer runs; with ``$TASKQ_REL_INIT_SLEEP``,
    take that long and record when (events ``initstart`` / ``initdone``, token = time)."""
    record("init", "-")
    delay = float(os.environ.get("TASKQ_REL_INIT_SLEEP") or 0)
    if delay:
        record("initstart", f"{time.time():.4f}")
        time.sleep(delay)
        record("initdone", f"{time.time():.4f}")


def init_windows(directory: str | Path) -> list[tuple[float, float]]:
    """(start, done) of every slow initializer run, by start time."""
    spans: dict[str, dict[str, float]] = {}
    for path in Path(directory).glob("*.log"):
        for line in path.read_text().splitlines():
            event, token, pid = line.split()
            if event in ("initstart", "initdone"):
                spans.setdefault(pid, {})[event] = float(token)
    return sorted((s["initstart"], s["initdone"]) for s in spans.values() if len(s) == 2)


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


@task(name="rel.once")
def once(token: str, seconds: float = 0.0) -> int:
    """Like work, without retries."""
    record("run", token)
    if seconds:
        time.sleep(seconds)
    record("end", token)
    return os.getpid()


@task(name="rel.crash")
def crash(token: str, how: str) -> None:
    """Kill the pool process running it: ``exit`` (os._exit(3)), ``segv``, ``kill``."""
    record("run", token)
    if how == "exit":
        os._exit(3)
    if how == "segv":
        ctypes.string_at(0)  # NULL dereference: SIGSEGV
    os.kill(os.getpid(), signal.SIGKILL)


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


@task(name="rel.slow", timeout=0.3)
def slow(token: str, seconds: float) -> str:
    """Sleeps past its soft limit: TaskTimeoutError is raised inside it."""
    record("run", token)
    try:
        time.sleep(seconds)
    except TaskTimeoutError:
        record("soft", token)
        raise
    return "finished"


@task(name="rel.stubborn", timeout=0.3)
def stubborn(token: str, seconds: float) -> str:
    """Swallows its soft timeout and sleeps on: only the hard limit can stop it."""
    record("run", token)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(end - time.monotonic())
        except TaskTimeoutError:
            record("soft", token)
    return "finished"


@task(name="rel.flaky", retries=3, retry_backoff=0.05)
def flaky(token: str, failures: int) -> int:
    """Fails its first ``failures`` runs, then returns how many runs it took."""
    record("run", token)
    directory = os.environ.get("TASKQ_REL_LOG", "")
    runs = read_log(directory)[token] if directory else 1
    if runs <= failures:
        raise ConnectionError(f"transient failure {runs}")
    return runs


@task(name="rel.hog")
def hog(token: str, megabytes: int, seconds: float = 0.0) -> int:
    """Keep ``megabytes`` of memory for the life of the process (then sleep)."""
    record("run", token)
    _hoard.append(b"x" * (megabytes * 1024 * 1024))
    time.sleep(seconds)
    return os.getpid()
