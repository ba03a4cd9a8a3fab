"""Reliability: every test really does the bad thing and counts what was lost.

Worker nodes are real subprocesses (``python -m taskq worker``) on a real Redis; tasks
come from ``tests/reliability_tasks.py`` and log every execution to files outside Redis
(``read_log``), so "ran exactly once", "ran again elsewhere" and "never ran" are facts,
not inferences from Redis state. Leases are short (1-2 s) to keep the file fast; every
wait is on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redis_lib
import reliability_tasks as rt

from taskq.broker import Broker
from taskq.client import Client
from taskq.errors import TaskError, TaskTimeoutError, WorkerLostError
from taskq.local.embedded import EmbeddedRedis

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = Path(__file__).resolve().parent
QUEUE_STREAM = "taskq:{default}:stream"


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Nodes:
    """Starts worker node subprocesses; whatever is left is SIGKILLed at teardown."""

    def __init__(self, url: str, log_dir: Path, tmp_path: Path) -> None:
        self.url, self.log_dir, self.tmp_path = url, log_dir, tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "TASKQ_REL_LOG": str(log_dir),
                    "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        for var in ("TASKQ_URL", "TASKQ_QUEUE", "TASKQ_LEASE", "TASKQ_BATCH", "TASKQ_PROCS"):
            self.env.pop(var, None)

    def start(self, *extra: str, procs: int = 1, lease: float = 2.0,
              url: str | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "taskq", "--url", url or self.url, "worker",
               "--procs", str(procs), "--lease", str(lease), "--import", "reliability_tasks",
               "--init", "reliability_tasks:init_child", "--log-level", "info", *extra]
        log = open(self.tmp_path / f"node-{len(self.procs)}.log", "wb")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def children(self, node: subprocess.Popen[bytes]) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(node.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp_path.glob("node-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                for child in self.children(p):
                    _kill(child)
                p.kill()
            p.wait()


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


def _make_nodes(url: str, log_dir: Path, tmp_path: Path) -> Iterator[Nodes]:
    nodes = Nodes(url, log_dir, tmp_path)
    try:
        yield nodes
    finally:
        nodes.stop_all()


@pytest.fixture
def nodes(redis_url: str, log_dir: Path, tmp_path: Path) -> Iterator[Nodes]:
    yield from _make_nodes(redis_url, log_dir, tmp_path)


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c


@pytest.fixture
def broker(redis_url: str) -> Iterator[Broker]:
    r = redis_lib.Redis.from_url(redis_url)
    b = Broker(r, "default")
    b.ensure_group()
    yield b
    r.close()


def runs(log_dir: Path, event: str = "run") -> dict[str, int]:
    return dict(rt.read_log(log_dir, event))


def _result(fut: Future[Any], timeout: float) -> Any:
    return fut.result(timeout=timeout)


def _error(fut: Future[Any], timeout: float) -> BaseException:
    exc = fut.exception(timeout=timeout)
    assert exc is not None, f"expected a failure, got {fut.result()!r}"
    return exc


# -- leases: node death, long tasks, late reports ------------------------------------------


def test_killed_node_tasks_run_again_elsewhere_within_a_lease(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    lease = 1.0
    a = nodes.start(procs=2, lease=lease)
    futures = [client.submit("rel.once", f"t{i}", 0.5) for i in range(4)]
    wait_until(lambda: len(runs(log_dir)) >= 2, 15, "node A to start two tasks")
    children = nodes.children(a)
    assert broker.info()["in_flight"] == 4  # all four claimed by A: 2 running, 2 queued
    a.kill()
    a.wait()
    killed_at = time.monotonic()
    wait_until(lambda: all(_gone(pid) for pid in children), 5, "A's pool processes to die with it")
    nodes.start(procs=2, lease=lease)
    values = [_result(f, 20) for f in futures]
    recovery = time.monotonic() - killed_at
    assert all(isinstance(v, int) for v in values)
    counts = runs(log_dir)
    assert sorted(counts) == ["t0", "t1", "t2", "t3"]  # nothing lost
    assert sum(counts.values()) - 4 <= 4  # duplicates bounded by what A held
    # Reclaimed after one lease (+ half a lease between reclaim scans, + B's startup),
    # then 4 half-second tasks on 2 processes.
    assert recovery < lease * 1.5 + 2.0 + 1.0 + 1.0, recovery
    info = broker.info()
    assert (info["done"], info["in_flight"], info["queued"], info["dead"]) == (4, 0, 0, 0)


def test_long_task_on_a_healthy_node_is_never_handed_to_another(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    for _ in range(2):  # two idle-hungry nodes reclaiming every half lease
        nodes.start(procs=1, lease=1.0)
    fut = client.submit("rel.once", "long", 3.0)  # 3 leases
    _result(fut, 20)
    assert runs(log_dir) == {"long": 1}
    info = broker.info()
    assert (info["done"], info["suppressed"]) == (1, 0)


def test_late_report_from_a_node_that_lost_its_lease_is_suppressed(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    a = nodes.start(procs=1, lease=1.0)
    fut = client.submit("rel.once", "late", 2.0)
    wait_until(lambda: runs(log_dir).get("late"), 15, "node A to start the task")
    (a_child,) = nodes.children(a)
    os.kill(a.pid, signal.SIGSTOP)  # A's parent freezes: no renewals; its child runs on
    try:
        nodes.start(procs=1, lease=1.0)
        wait_until(lambda: runs(log_dir).get("late") == 2, 15, "node B to reclaim and rerun it")
    finally:
        os.kill(a.pid, signal.SIGCONT)  # A wakes up and reports its (stale) outcome
    value = _result(fut, 15)
    wait_until(lambda: broker.info()["suppressed"] == 1, 10, "A's late report to be suppressed")
    assert value != a_child  # the outcome recorded is B's
    info = broker.info()
    assert (info["done"], info["in_flight"], info["suppressed"]) == (1, 0, 1)
    assert a.poll() is None  # A is fine and keeps serving
    assert _result(client.submit("rel.once", "after", 0), 15)


# -- pool processes: crashes, timeouts, recycling ------------------------------------------


def test_child_death_fails_only_its_task_and_the_child_is_replaced(
        nodes: Nodes, client: Client, log_dir: Path) -> None:
    node = nodes.start(procs=2)
    good = [client.submit("rel.once", f"ok{i}", 0.2) for i in range(6)]
    crashes = {how: client.submit("rel.crash", f"crash-{how}", how) for how in ("exit", "segv", "kill")}
    assert "exited with code 3" in str(_error(crashes["exit"], 20))
    assert "SIGSEGV" in str(_error(crashes["segv"], 20))
    assert "SIGKILL" in str(_error(crashes["kill"], 20))
    for fut in crashes.values():
        assert isinstance(fut.exception(), WorkerLostError)
    assert all(isinstance(_result(f, 20), int) for f in good)
    # An outside SIGKILL of the process running a task.
    victim = client.submit("rel.once", "victim", 30.0)
    wait_until(lambda: runs(log_dir).get("victim"), 10, "the victim task to start")
    (pid,) = [p for p in nodes.children(node) if p in _pids_running(log_dir, "victim")]
    os.kill(pid, signal.SIGKILL)
    exc = _error(victim, 10)
    assert isinstance(exc, WorkerLostError) and f"pool process {pid} was killed by signal SIGKILL" in str(exc)
    assert runs(log_dir)["victim"] == 1  # no retries: it failed, once
    # 2 initial processes + 4 replacements, each ran the initializer.
    wait_until(lambda: runs(log_dir, "init").get("-") == 6, 10, "replacements to initialize")
    assert len(nodes.children(node)) == 2


def _pids_running(log_dir: Path, token: str) -> set[int]:
    pids = set()
    for path in log_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            event, tok, pid = line.split()
            if event == "run" and tok == token:
                pids.add(int(pid))
    return pids


def test_worker_lost_is_retried_for_a_task_with_retries(
        nodes: Nodes, client: Client, log_dir: Path) -> None:
    node = nodes.start(procs=2)
    fut = client.submit("rel.work", "retried", 30.0)
    wait_until(lambda: runs(log_dir).get("retried"), 10, "the task to start")
    (pid,) = _pids_running(log_dir, "retried")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: runs(log_dir).get("retried") == 2, 10, "the retry to start")
    assert pid not in nodes.children(node)
    # Dies every time: retried once (retries=1), then fails for good, no loop.
    poison = client.submit("rel.poison_child", "poison")
    exc = _error(poison, 15)
    assert isinstance(exc, WorkerLostError) and "exited with code 7" in str(exc)
    assert runs(log_dir)["poison"] == 2
    assert not fut.done()


def test_soft_timeout_per_task_and_per_call(nodes: Nodes, client: Client, log_dir: Path) -> None:
    nodes.start(procs=2)
    soft = client.submit("rel.slow", "soft", 10.0)  # @task(timeout=0.3)
    exc = _error(soft, 10)
    assert isinstance(exc, TaskTimeoutError) and "0.3 s time limit" in str(exc)
    assert runs(log_dir, "soft") == {"soft": 1}  # raised inside the task
    longer = client.apply("rel.slow", ("longer", 0.6), timeout=5.0)  # per-call override
    assert _result(longer, 10) == "finished"
    shorter = client.apply("rel.once", ("shorter", 10.0), timeout=0.2)
    assert isinstance(_error(shorter, 10), TaskTimeoutError)


def test_hard_timeout_kills_only_the_overrunning_child(
        nodes: Nodes, client: Client, log_dir: Path) -> None:
    node = nodes.start("--hard-timeout-grace", "0.5", procs=2)
    wait_until(lambda: runs(log_dir, "init").get("-") == 2, 10, "the pool to start")
    before = set(nodes.children(node))
    neighbour = client.submit("rel.once", "neighbour", 2.0)
    wait_until(lambda: runs(log_dir).get("neighbour"), 10, "the neighbour to start")
    t0 = time.monotonic()
    stuck = client.submit("rel.stubborn", "stuck", 30.0)  # swallows its soft timeout
    exc = _error(stuck, 10)
    assert time.monotonic() - t0 < 3.0
    assert isinstance(exc, TaskTimeoutError) and "was killed after" in str(exc)
    assert runs(log_dir, "soft") == {"stuck": 1}
    assert isinstance(_result(neighbour, 10), int)  # its sibling was not disturbed
    after = set(nodes.children(node))
    assert len(after) == 2 and len(before & after) == 1  # exactly one process replaced


def test_recycling_after_n_tasks(nodes: Nodes, client: Client, log_dir: Path) -> None:
    nodes.start("--max-tasks-per-child", "3", procs=2)
    futures = [client.submit("rel.once", f"r{i}", 0.01) for i in range(12)]
    pids = [_result(f, 20) for f in futures]
    per_pid = {p: pids.count(p) for p in set(pids)}
    assert max(per_pid.values()) <= 3 and len(per_pid) >= 4, per_pid
    inits = rt.read_log(log_dir, "init")["-"]
    assert inits >= len(per_pid)  # every replacement ran the initializer


def test_recycling_on_memory(nodes: Nodes, client: Client, log_dir: Path) -> None:
    node = nodes.start("--max-memory-per-child", "100", procs=1)
    hog_pid = _result(client.submit("rel.hog", "hog", 200), 20)  # the task itself succeeds
    wait_until(lambda: _gone(hog_pid), 10, "the bloated process to be replaced")
    assert _result(client.submit("rel.once", "next", 0), 10) != hog_pid
    assert len(nodes.children(node)) == 1


def _one_at_a_time(log_dir: Path, procs: int) -> None:
    """Replacements initialize one after another, and only once the first processes are up."""
    windows = rt.init_windows(log_dir)
    assert len(windows) > procs, windows
    for i in range(procs, len(windows)):
        assert windows[i][0] >= max(done for _, done in windows[:i]) - 0.01, windows


def test_recycling_after_n_tasks_is_one_process_at_a_time(
        nodes: Nodes, client: Client, log_dir: Path) -> None:
    nodes.env["TASKQ_REL_INIT_SLEEP"] = "0.3"
    nodes.start("--max-tasks-per-child", "3", procs=2)
    futures = [client.submit("rel.once", f"r{i}", 0.01) for i in range(16)]
    pids = [_result(f, 30) for f in futures]
    assert max(pids.count(p) for p in pids) <= 3
    _one_at_a_time(log_dir, 2)


def test_recycling_on_memory_is_one_process_at_a_time(
        nodes: Nodes, client: Client, log_dir: Path) -> None:
    nodes.env["TASKQ_REL_INIT_SLEEP"] = "0.5"
    node = nodes.start("--max-memory-per-child", "100", procs=2)
    wait_until(lambda: len(rt.init_windows(log_dir)) == 2, 10, "the pool to start")
    hogs = [client.submit("rel.hog", f"h{i}", 200, 0.2) for i in range(2)]  # both at once
    hog_pids = {_result(f, 20) for f in hogs}
    assert len(hog_pids) == 2
    wait_until(lambda: len(rt.init_windows(log_dir)) == 4, 10, "both to be replaced")
    assert all(_gone(p) for p in hog_pids)
    _one_at_a_time(log_dir, 2)
    wait_until(lambda: len(nodes.children(node)) == 2, 5, "two pool processes")


# -- retries and poison -----------------------------------------------------------------------


def test_retries_with_backoff(nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    nodes.start(procs=2)
    ok = client.submit("rel.flaky", "twice", 2)  # fails twice, then succeeds
    assert _result(ok, 15) == 3
    gives_up = client.submit("rel.flaky", "always", 99)  # retries=3: four runs, then fails
    exc = _error(gives_up, 15)
    assert isinstance(exc, TaskError) and exc.type_name == "ConnectionError"
    assert runs(log_dir) == {"twice": 3, "always": 4}
    info = broker.info()
    assert (info["retried"], info["done"], info["failed"], info["delayed"]) == (5, 1, 1, 0)


def test_poison_that_kills_its_node_is_dead_lettered(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    fut = client.submit("rel.kill_node", "poison")
    good = [client.submit("rel.once", f"g{i}", 0) for i in range(5)]
    started = 0
    # A supervisor that keeps one node alive, the way systemd or Kubernetes would.
    deadline = time.monotonic() + 40
    current: subprocess.Popen[bytes] | None = None
    while not fut.done():
        assert time.monotonic() < deadline, nodes.output()
        if current is None or current.poll() is not None:
            current = nodes.start("--max-deliveries", "3", procs=1, lease=1.0)
            started += 1
        time.sleep(0.05)
    exc = _error(fut, 1)
    assert "poison: its node was lost 3 times" in str(exc)
    assert runs(log_dir)["poison"] == 3  # max-deliveries executions, no more
    # The healthy tasks claimed with it were lost with its nodes too, but once it was a
    # suspect it ran alone: they all completed, none was dead-lettered.
    assert all(isinstance(_result(f, 15), int) for f in good)
    ((_, fields),) = broker.dead_entries()
    assert b"poison" in fields[b"reason"]
    assert started == 4


# -- bad data ------------------------------------------------------------------------------


def test_bad_messages_are_dead_lettered_and_never_run(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    big = b'{"id":"big","t":"rel.once","a":["big","' + b"x" * (17 * 1024 * 1024) + b'"]}'
    garbage: list[dict[bytes, bytes]] = [
        {b"m": b"\xff\xfe not json"},
        {b"foo": b"bar"},
        {b"m": b"[1, 2, 3]"},
        {b"m": b'{"t": "rel.once", "a": ["no-id"]}'},
        {b"m": b'{"id": "unknown", "t": "no.such.task", "a": []}'},
        {b"m": b'{"id": "shape", "t": "rel.once", "a": {"not": "a list"}}'},
        {b"m": b'{"id": "pickle", "t": "", "a": [], "p": "gASVAAAAAAAAAAB9lC4="}'},
        {b"m": big},
    ]
    r = broker.client
    for fields in garbage:
        r.xadd(QUEUE_STREAM, fields)  # type: ignore[arg-type]
    node = nodes.start(procs=2)
    assert _result(client.submit("rel.once", "good", 0), 20)
    wait_until(lambda: broker.info()["dead"] == len(garbage), 10, "every bad entry dead-lettered")
    reasons = [f[b"reason"].decode() for _, f in broker.dead_entries()]
    assert sum("malformed" in r for r in reasons) == 5, reasons
    assert sum("unknown task" in r for r in reasons) == 1, reasons
    assert sum("untrusted" in r for r in reasons) == 1, reasons
    assert sum("exceeds" in r for r in reasons) == 1, reasons
    assert runs(log_dir) == {"good": 1}  # nothing bad was executed
    info = broker.info()
    assert (info["in_flight"], info["queued"]) == (0, 0)
    assert node.poll() is None


# -- dead letter management ------------------------------------------------------------------


def _cli(url: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "taskq", "--url", url, *args],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def test_dead_letter_cli_list_retry_purge(
        nodes: Nodes, redis_url: str, client: Client, broker: Broker, log_dir: Path) -> None:
    # Tasks the first node does not know (it does not import them: a deploy mistake).
    r = broker.client
    for i in range(3):
        r.xadd(QUEUE_STREAM, {"m": f'{{"id": "d{i}", "t": "rel.later", "a": ["d{i}"], "kr": 1}}'})
    nodes.start(procs=1)
    wait_until(lambda: broker.info()["dead"] == 3, 15, "the unknown tasks to be dead-lettered")
    listing = _cli(redis_url, "dead", "list").splitlines()
    assert len(listing) == 3 and all("unknown task 'rel.later'" in line for line in listing)
    first_id = listing[0].split()[0]
    assert _cli(redis_url, "dead", "retry", first_id).strip() == "requeued 1 task(s)"
    wait_until(lambda: broker.info()["dead"] == 3, 15, "it to die again on the same node")
    assert "requeued 3 task(s)" in _cli(redis_url, "dead", "retry", "--all")
    wait_until(lambda: broker.info()["dead"] == 3, 15, "them to die again")
    assert "purged 3 task(s)" in _cli(redis_url, "dead", "purge")
    assert _cli(redis_url, "dead", "list") == ""
    assert broker.info()["dead"] == 0 and runs(log_dir) == {}


# -- shutdown ---------------------------------------------------------------------------------


def test_sigterm_finishes_running_tasks_and_hands_back_the_rest(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    node = nodes.start("--batch", "4", procs=1, lease=30.0)  # a lease long enough to notice
    futures = [client.submit("rel.once", f"s{i}", 0.5) for i in range(4)]
    wait_until(lambda: runs(log_dir).get("s0"), 10, "the first task to start")
    assert broker.info()["in_flight"] >= 2  # one running, more claimed but not started
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=10) == 0
    assert _result(futures[0], 1)  # the running one finished and was reported
    assert runs(log_dir) == {"s0": 1}
    info = broker.info()
    assert (info["in_flight"], info["queued"], info["done"]) == (0, 3, 1)  # handed back at once
    nodes.start(procs=2, lease=30.0)
    assert all(_result(f, 15) for f in futures[1:])
    assert runs(log_dir) == {"s0": 1, "s1": 1, "s2": 1, "s3": 1}


def test_second_signal_hands_back_everything_and_exits_now(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    node = nodes.start(procs=1, lease=30.0)
    client.submit("rel.once", "long", 30.0)
    wait_until(lambda: runs(log_dir).get("long"), 10, "the task to start")
    children = nodes.children(node)
    node.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert node.poll() is None  # still waiting for the running task
    t0 = time.monotonic()
    node.send_signal(signal.SIGINT)
    assert node.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2
    assert all(_gone(pid) for pid in children)
    info = broker.info()
    assert (info["in_flight"], info["queued"], info["done"], info["failed"]) == (0, 1, 0, 0)


def test_shutdown_timeout_bounds_the_drain(
        nodes: Nodes, client: Client, broker: Broker, log_dir: Path) -> None:
    node = nodes.start("--shutdown-timeout", "0.5", procs=1, lease=30.0)
    client.submit("rel.once", "long", 30.0)
    wait_until(lambda: runs(log_dir).get("long"), 10, "the task to start")
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=5) == 0
    info = broker.info()
    assert (info["in_flight"], info["queued"]) == (0, 1)


# -- Redis outages -----------------------------------------------------------------------------


@pytest.fixture
def outage_nodes(embedded_server: EmbeddedRedis, log_dir: Path, tmp_path: Path) -> Iterator[Nodes]:
    yield from _make_nodes(embedded_server.url, log_dir, tmp_path)


def test_redis_restart_node_and_producer_carry_on(
        embedded_server: EmbeddedRedis, outage_nodes: Nodes, log_dir: Path) -> None:
    node = outage_nodes.start(procs=2, lease=2.0)
    with Client(embedded_server.url) as client:
        futures = [client.submit("rel.once", f"o{i}", 0.5) for i in range(6)]
        wait_until(lambda: len(runs(log_dir)) >= 2, 10, "two tasks to start")
        embedded_server.kill()
        # The two running tasks finish while Redis is down: their outcomes must be kept.
        wait_until(lambda: len(runs(log_dir, "end")) >= 2, 10, "tasks to finish during the outage")
        time.sleep(0.5)
        embedded_server.restart()
        values = [_result(f, 20) for f in futures]  # the listener reconnected too
        assert all(isinstance(v, int) for v in values)
        assert runs(log_dir) == {f"o{i}": 1 for i in range(6)}  # reported once, not rerun
        more = [client.submit("rel.once", f"p{i}", 0) for i in range(4)]
        assert all(isinstance(_result(f, 20), int) for f in more)
        embedded_server.kill()  # and a second time, now while idle
        time.sleep(0.3)
        embedded_server.restart()
        assert isinstance(_result(client.submit("rel.once", "q", 0), 20), int)
        info = Broker(client.redis, "default").info()
        assert (info["done"], info["in_flight"], info["queued"]) == (11, 0, 0)
    assert node.poll() is None


def test_nodes_survive_redis_down_longer_than_their_lease(
        embedded_server: EmbeddedRedis, outage_nodes: Nodes, log_dir: Path) -> None:
    """After an outage longer than the lease every node renews what it holds before any
    node reclaims: nothing is taken from a live node, nothing runs twice."""
    # Lease 2 s: the post-outage reclaim delay (lease/2 + 1 s) then leaves a second of
    # slack over the nodes' reconnect backoff (<= 1 s), even on a loaded machine.
    a = outage_nodes.start(procs=1, lease=2.0)
    b = outage_nodes.start(procs=1, lease=2.0)
    with Client(embedded_server.url) as client:
        futures = [client.submit("rel.once", f"through{i}", 4.0) for i in range(2)]
        wait_until(lambda: len(runs(log_dir)) == 2, 10, "both nodes to start a task")
        embedded_server.kill()
        time.sleep(2.4)  # longer than the lease
        embedded_server.restart()
        assert all(isinstance(_result(f, 20), int) for f in futures)
        assert runs(log_dir) == {"through0": 1, "through1": 1}
        info = Broker(client.redis, "default").info()
        assert (info["done"], info["in_flight"], info["suppressed"]) == (2, 0, 0)
    assert a.poll() is None and b.poll() is None


def test_node_recreates_the_queue_after_redis_restarts_empty(
        embedded_server: EmbeddedRedis, outage_nodes: Nodes, log_dir: Path) -> None:
    """Without persistence a restart loses everything, the consumer group too (NOGROUP):
    the node recreates it and carries on with new work."""
    node = outage_nodes.start(procs=1, lease=1.0)
    with Client(embedded_server.url) as client:
        assert _result(client.submit("rel.once", "before", 0), 10)
        with redis_lib.Redis.from_url(embedded_server.url) as r:
            r.flushall()  # what a restart without AOF or RDB looks like to a node
        wait_until(lambda: Broker(client.redis, "default").client.exists(QUEUE_STREAM), 10,
                   "the node to recreate the stream and its group")
    with Client(embedded_server.url) as client:  # a fresh producer: it creates nothing
        assert _result(client.submit("rel.once", "after", 0), 10)
    assert node.poll() is None


def test_producer_recovers_a_reply_lost_with_its_connection(
        nodes: Nodes, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis killed between popping a reply and sending it: the reply is gone, but the
    outcome is stored, and the listener reads it after reconnecting."""

    class LosingRedis(redis_lib.Redis):
        lost: list[Any] = []

        def blpop(self, keys: Any, timeout: Any = 0) -> Any:
            item = super().blpop(keys, timeout)
            if item is not None and not LosingRedis.lost:
                LosingRedis.lost.append(item)
                raise redis_lib.ConnectionError("connection lost with the reply")
            return item

    def connect(url: str, retries: bool = True, **kw: Any) -> redis_lib.Redis:
        return LosingRedis.from_url(url, **kw)

    monkeypatch.setattr("taskq.client.client.connect", connect)
    nodes.start(procs=1)
    with Client(redis_url) as client:
        fut = client.submit("rel.once", "reply", 0)
        assert isinstance(_result(fut, 15), int)
    assert LosingRedis.lost  # the reply really was swallowed
