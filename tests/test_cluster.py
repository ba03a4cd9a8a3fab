"""Redis Cluster: URLs, a worker serving queues on three masters, failovers survived.

Against a real 3-master + 3-replica cluster (the session fixture ``cluster``). The
failover tests count like the chaos test: every future resolves with the right value,
no node exits, duplicates (completions beyond the tasks) bounded; they print their counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import taskq
from taskq.broker import connect
from taskq.broker.keys import QueueKeys
from taskq.config import Settings, parse_target, validate_url
from taskq.errors import ConfigError, TaskLostError

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "TASKQ_LEASE": "5"}


def test_cluster_and_sentinel_urls_parse_in_one_place() -> None:
    t = parse_target("rediss+cluster://a:7000,[::1]:7001/")
    assert (t.kind, t.hosts, t.ssl) == ("cluster", (("a", 7000), ("::1", 7001)), True)
    t = parse_target("redis+sentinel://u:p%40ss@s1,s2:26380/mymaster/2?sentinel_password=x")
    assert (t.kind, t.hosts, t.master, t.db, t.username, t.password, t.sentinel_password) == (
        "sentinel", (("s1", 26379), ("s2", 26380)), "mymaster", 2, "u", "p@ss", "x")
    for bad in ("redis+cluster://a:1/3", "redis+cluster://a:99999/", "redis+sentinel://s1/",
                "redis+sentinel://s1/m/x", "redis+cluster://a/?nope=1", "redis+cluster:///"):
        with pytest.raises(ConfigError) as info:
            validate_url(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings(url="redis+sentinel://u:hunter2@h/")  # no master name
    assert "hunter2" not in str(info.value) and "u:***@" in str(info.value)


def test_bad_cluster_url_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "taskq", "--url", "redis+cluster://h:1/5",
                           "info"], capture_output=True, text=True, timeout=30, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "database 0 only" in proc.stderr


def queues_on_masters(cluster: Any, n: int = 3) -> list[str]:
    """``n`` queue names whose slots live on ``n`` different masters."""
    found: dict[int, str] = {}
    for i in range(1000):
        name = f"q{i}"
        found.setdefault(cluster.master_of(QueueKeys(name).stream), name)
        if len(found) == n:
            return list(found.values())
    raise AssertionError("could not spread queues over the masters")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    """Start ``taskq worker`` subprocesses; their output goes to a file (a pipe nobody
    reads would block a node that logs a lot through an outage), shown if a test fails."""
    procs: list[subprocess.Popen[str]] = []
    logs: list[Path] = []

    def start(url: str, queues: list[str], *extra: str) -> subprocess.Popen[str]:
        args = [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "2",
                "--import", "cluster_tasks", *(a for q in queues for a in ("--queue", q)), *extra]
        logs.append(tmp_path / f"worker-{len(logs)}.log")
        with logs[-1].open("w") as out:
            proc = subprocess.Popen(args, env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc

    yield start
    for log in logs:
        print(f"--- {log.name} (last 3000 characters):\n{log.read_text()[-3000:]}")
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def stats(url: str, queue: str) -> dict[str, int]:
    raw: Any = connect(url).hgetall(QueueKeys(queue).stats)
    return {k.decode(): int(v) for k, v in raw.items()}


def count(futures: list[Future[Any]], timeout: float) -> tuple[int, int, int, int]:
    """(right, wrong, lost: TaskLostError, unresolved) once all resolve or ``timeout``."""
    end = time.monotonic() + timeout
    right = wrong = lost = unresolved = 0
    for i, fut in enumerate(futures):
        try:
            value = fut.result(max(0.0, end - time.monotonic()))
        except TaskLostError:
            lost += 1
        except TimeoutError:
            unresolved += 1
        else:
            right += value == 2 * i
            wrong += value != 2 * i
    return right, wrong, lost, unresolved


@pytest.mark.timeout(90)
def test_worker_serves_three_queues_on_three_masters(cluster: Any, cluster_url: str,
                                                      start_worker: Any) -> None:
    queues = queues_on_masters(cluster)
    assert len({cluster.master_of(QueueKeys(q).stream) for q in queues}) == 3
    worker = start_worker(cluster_url, queues)
    clients = [taskq.Client(cluster_url, queue=q) for q in queues]
    try:
        futures = [[c.submit("cluster.double", i) for i in range(300)] for c in clients]
        for fs in futures:
            assert count(fs, 60) == (300, 0, 0, 0)
        assert worker.poll() is None
        shared = taskq.Value("i", 0, url=cluster_url)  # {shared}: one slot, on a cluster too
        with shared.get_lock():
            shared.value += 5
        assert shared.value == 5
    finally:
        for c in clients:
            c.close()
    assert all(stats(cluster_url, q)["done"] == 300 for q in queues)


def run_through_failover(url: str, queue: str, fail: Any, n: int, *,
                         wait_replicas: int = 0) -> tuple[int, int, int, int, int]:
    """Submit ``n`` tasks, call ``fail()`` once a tenth resolved; the counts, and the
    completions beyond ``n`` (duplicates)."""
    settings = Settings.from_env(url=url, queues=(queue,), lease=5.0, wait_replicas=wait_replicas)
    with taskq.Client(settings=settings) as client:
        futures = [client.submit("cluster.double", i, 0.002) for i in range(n)]
        end = time.monotonic() + 30
        while sum(f.done() for f in futures) < n // 10 and time.monotonic() < end:
            time.sleep(0.05)
        fail()
        right, wrong, lost, unresolved = count(futures, 75)
    done = stats(url, queue).get("done", 0)
    return right, wrong, lost, unresolved, max(0, done - right)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cluster_failover_mid_run_loses_nothing(cluster: Any, cluster_url: str,
                                                start_worker: Any) -> None:
    queue = queues_on_masters(cluster, 1)[0]
    master = cluster.master_of(QueueKeys(queue).stream)
    replica = cluster.replica_of(master)
    worker = start_worker(cluster_url, [queue])

    def fail() -> None:  # a planned failover: the replica takes over, the master steps down
        cluster.client(replica).execute_command("CLUSTER", "FAILOVER")

    n = 3000
    right, wrong, lost, unresolved, dups = run_through_failover(cluster_url, queue, fail, n)
    print(f"CLUSTER FAILOVER: {n} tasks, right {right}, wrong {wrong}, lost {lost}, "
          f"unresolved {unresolved}, duplicate completions {dups}")
    assert cluster.master_of(QueueKeys(queue).stream) == replica  # it did fail over
    assert (right, wrong, lost, unresolved) == (n, 0, 0, 0)
    assert dups <= 2 * 256  # at most a claim's worth re-run, twice
    assert worker.poll() is None, "the node exited"
    cluster.wait_ok()


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_sigkill_of_a_master_is_ridden_out(cluster: Any, cluster_url: str, start_worker: Any,
                                           wait_replicas: int) -> None:
    """An unplanned failover: the queue's master is SIGKILLed, its replica is promoted
    after the node timeout, and the killed server comes back (empty) as a replica of the
    promoted one, as a supervisor would restart it. Without --wait-replicas an
    acknowledged write may be lost (replication is asynchronous): a lost enqueue's future
    fails TaskLostError, a lost completion is a re-run. With --wait-replicas 1 nothing
    acknowledged is lost."""
    queue = queues_on_masters(cluster, 1)[0]
    key = QueueKeys(queue).stream
    master = cluster.master_of(key)
    worker = start_worker(cluster_url, [queue], "--wait-replicas", str(wait_replicas))
    n = 2000
    ports: list[tuple[int, int]] = []
    right, wrong, lost, unresolved, dups = run_through_failover(
        cluster_url, queue, lambda: ports.append(cluster.kill_master(key)), n,
        wait_replicas=wait_replicas)
    print(f"SIGKILL of the master, --wait-replicas {wait_replicas}: {n} tasks, right {right}, "
          f"wrong {wrong}, lost {lost}, unresolved {unresolved}, duplicate completions {dups}")
    assert ports and ports[0][0] == master and cluster.master_of(key) == ports[0][1]
    assert wrong == unresolved == 0  # every future resolves: a value, or TaskLostError
    assert right + lost == n
    if wait_replicas:
        assert (right, lost) == (n, 0)
    assert dups <= 2 * 256
    assert worker.poll() is None, "the node exited"
