"""The same producer/worker suite over a single server, a Redis Cluster and Sentinel.

A representative set of the e2e / Executor / Pool tests, parametrized over the three
topologies (the session fixtures ``redis_url``, ``cluster_url``, ``sentinel_url``): a
real ``taskq worker`` subprocess, and the producer APIs a user would call on it —
submit, map, send_many + batch, Executor.map (by name and a signed pickled function),
Pool.map, and a bad entry dead-lettered (listed, retried) rather than run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskq
from taskq.broker import Broker, connect

pytestmark = pytest.mark.timeout(60)
TESTS = Path(__file__).resolve().parent
SECRET = "topologies-secret-0123456789abcdef0123"
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")},
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "TASKQ_SECRET": SECRET}


def square(x: int) -> int:
    """Travels by reference (pickled, signed): the node imports this module."""
    return x * x


@pytest.fixture(params=["single", "cluster", "sentinel"])
def url(request: pytest.FixtureRequest) -> str:
    """Each topology's URL, its data flushed."""
    name = {"single": "redis_url", "cluster": "cluster_url", "sentinel": "sentinel_url"}
    return str(request.getfixturevalue(name[request.param]))


@pytest.fixture
def worker(url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "2",
             "--import", "cluster_tasks", "--import", "taskq.tasks", "--log-level", "warning"],
            env=ENV, stdout=out, stderr=subprocess.STDOUT, cwd="/")
    yield proc
    proc.terminate()
    try:
        assert proc.wait(20) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_submit_map_send_many_and_batch(url: str, worker: subprocess.Popen[bytes]) -> None:
    with taskq.Client(url, secret=SECRET) as client:
        futures = [client.submit("cluster.double", i) for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(50)]
        assert list(client.map("cluster.double", range(100), timeout=30)) == [
            2 * i for i in range(100)]
        batch = client.send_many("cluster.double", [[i] for i in range(40)], keep_results=True)
        status = client.batch(batch.id).wait(timeout=30)
        assert (status.done, status.failed) == (40, 0)
    assert worker.poll() is None


def test_executor_and_pool_map(url: str, worker: subprocess.Popen[bytes]) -> None:
    with taskq.Executor(url, secret=SECRET) as ex:
        assert list(ex.map("primes", [0, 1000], [1000, 2000])) == [168, 135]
        assert list(ex.map(square, range(20), timeout=30)) == [x * x for x in range(20)]
    with taskq.Pool(url=url, secret=SECRET) as pool:
        assert pool.map(square, range(30)) == [x * x for x in range(30)]
    assert worker.poll() is None


def test_unknown_task_is_dead_lettered_listed_and_retried(
        url: str, worker: subprocess.Popen[bytes]) -> None:
    broker = Broker(connect(url), "default")
    with taskq.Client(url, secret=SECRET) as client:
        fut = client.submit("no.such.task", 1)
        with pytest.raises(taskq.DeadLetteredError, match="unknown task"):
            fut.result(timeout=30)
    (first, fields), = broker.dead_entries()
    assert b"unknown task 'no.such.task'" in fields[b"reason"]
    assert broker.dead_retry(None) == 1  # back in the stream: dead-lettered again
    end = time.monotonic() + 20
    while [d for d, _ in broker.dead_entries()] in ([], [first]) and time.monotonic() < end:
        time.sleep(0.05)
    (again, fields), = broker.dead_entries()
    assert again != first and b"unknown task" in fields[b"reason"]
    assert worker.poll() is None
