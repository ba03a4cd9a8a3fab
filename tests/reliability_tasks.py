"""Tasks that misbehave on purpose, for tests/test_reliability.py.

Worker subprocesses import this module with ``--import reliability_tasks`` (``tests/`` on
PYTHONPATH). The execution log and the tasks scripts/chaos.py also runs (``rel.work``,
``rel.poison_child``, ``rel.kill_node``) live in ``scripts/chaos_tasks.py`` and are
re-exported here: tests may use scripts, scripts never import tests.

Line format of the log: ``<event> <token> <pid>`` with event ``run`` (a task started),
``end`` (it returned) or ``init`` (a pool process ran its initializer; token ``-``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from chaos_tasks import kill_node, poison_child, read_log, record, work  # noqa: E402

from taskq import task  # noqa: E402
from taskq.errors import TaskTimeoutError  # noqa: E402

__all__ = ["crash", "flaky", "hog", "init_child", "init_windows", "kill_node", "once",
           "poison_child", "read_log", "record", "slow", "stubborn", "work"]

_hoard: list[bytes] = []


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
