"""Cancel: a queued task never starts, a running one's process is killed and replaced
(initializer re-run) within about a second, batches and the CLI, against a real Redis
and a real ``taskq worker`` (this module is also the worker's task module)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
import redis as redis_lib

import taskq

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
INIT_LOG: list[str] = []


def init(path: str) -> None:
    """The worker's --init: every process appends its pid, so a replacement shows."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    INIT_LOG.append(path)


@taskq.task(name="cancel.sleep")
def sleep_task(seconds: float, marker: str) -> int:
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@taskq.task(name="cancel.pid")
def pid_task() -> list[object]:
    return [os.getpid(), bool(INIT_LOG)]


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)  # another process's state: nothing to wait on


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[Path]:
    inits = tmp_path / "inits"
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "1",
         "--import", "test_cancel", "--init", "test_cancel:init", "--init-args",
         f'["{inits}"]'], env=ENV, stderr=open(tmp_path / "log", "w"))  # noqa: SIM115
    yield inits
    proc.kill()
    proc.wait(timeout=10)


def _stat(redis_url: str, name: str) -> int:
    r = redis_lib.Redis.from_url(redis_url)
    try:
        return int(r.hget("taskq:{default}:stats", name) or 0)
    finally:
        r.close()


@pytest.mark.timeout(60)
def test_running_task_is_killed_within_a_second_and_its_process_replaced(
        redis_url: str, worker: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    with taskq.Client(redis_url) as client:
        fut = client.submit("cancel.sleep", 30, str(marker))
        _until(marker.exists)
        victim = int(marker.read_text())
        t0 = time.monotonic()
        assert client.cancel(fut) is True
        with pytest.raises(CancelledError):
            fut.result(timeout=10)
        assert time.monotonic() - t0 < 1.5
        assert fut.cancelled()
        pid, initialized = client.submit("cancel.pid").result(timeout=20)
        assert pid != victim and initialized
        assert str(pid) in worker.read_text().split()  # the initializer ran in the new one
        outcome = client.result(fut.task_id)  # type: ignore[attr-defined]
        assert outcome is not None and not outcome.ok and outcome.error is not None
        assert outcome.error[0] == "CancelledError"
        assert client.cancel(fut) is False  # finished: nothing to cancel
    assert _stat(redis_url, "cancelled") == 1


@pytest.mark.timeout(60)
def test_a_queued_task_never_starts(redis_url: str, worker: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with taskq.Client(redis_url) as client:
        busy = client.submit("cancel.sleep", 30, str(first))
        _until(first.exists)
        queued = client.submit("cancel.sleep", 0, str(second))  # behind the long one
        client.flush()
        assert client.cancel(queued) is True
        with pytest.raises(CancelledError):
            queued.result(timeout=10)
        assert client.cancel(busy.task_id) is True  # by id: looked up in the stream
        with pytest.raises(CancelledError):
            busy.result(timeout=10)
        assert client.submit("cancel.pid").result(timeout=20)[1]
    assert not second.exists()
    assert _stat(redis_url, "cancelled") == 2


@pytest.mark.timeout(60)
def test_cancel_without_a_node_and_a_batch_from_the_cli(redis_url: str, tmp_path: Path) -> None:
    with taskq.Client(redis_url) as client:
        fut = client.submit("cancel.pid")
        assert client.cancel(fut) is True and fut.cancelled()
        assert client.redis.xlen(client.broker.keys.stream) == 0  # gone: no node can start it
        _, batch = client.submit_many("cancel.pid", [()] * 5, batch=True)
        assert batch is not None
        done = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "cancel",
                               batch.id, "nosuchid"], env=ENV, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert f"{batch.id}: 5 task(s)" in done.stdout and "nosuchid: not queued" in done.stdout
        status = batch.wait(timeout=5)
        assert (status.cancelled, status.done, status.complete) == (5, 0, True)
        none = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "cancel",
                               "nosuchid"], env=ENV, capture_output=True, text=True, timeout=30)
        assert none.returncode == 1 and "Traceback" not in none.stderr
    assert _stat(redis_url, "cancelled") == 6


@pytest.mark.timeout(60)
def test_executor_shutdown_cancel_futures_stops_its_remote_work(
        redis_url: str, worker: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    ex = taskq.Executor(redis_url)
    running = ex.submit(sleep_task, 30, str(first))
    _until(first.exists)
    queued = ex.submit(sleep_task, 0, str(second))
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 5 and running.cancelled() and queued.cancelled()
    with taskq.Client(redis_url) as client:
        pid, _ = client.submit("cancel.pid").result(timeout=20)
        assert pid != int(first.read_text())  # the long task's process was killed
        info = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "info",
                               "--interval", "0"], env=ENV, capture_output=True, text=True,
                              timeout=30)
        assert "cancelled" in info.stdout
    assert not second.exists()
    assert _stat(redis_url, "cancelled") == 2
