"""SupervisedPool: results, errors, crashes, timeouts, recycling, balance, shutdown.

Runners are module-level (fork makes them available in the children). Tests coordinate
with children through pipes created before the pool starts, never by sleeping.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskq.errors import TaskqError
from taskq.node import child as pool_module
from taskq.node.child import arm_timeout
from taskq.node.pool import Done, Job, PoolInitError, SupervisedPool

pytestmark = pytest.mark.timeout(30)

_init_pid: int | None = None
_hoard: list[bytes] = []


def init_record_pid() -> None:
    global _init_pid
    _init_pid = os.getpid()


def init_fail() -> None:
    raise ValueError("no database\nfor you")


def init_exit() -> None:
    os._exit(7)


def run(payload: Any) -> Any:
    """Test runner: payload is (op, *args)."""
    op, *args = payload
    if op == "id":
        return args[0]
    if op == "pid":
        return os.getpid()
    if op == "init_pid":
        return (os.getpid(), _init_pid)
    if op == "raise":
        raise KeyError(args[0])
    if op == "announce_sleep":  # tell the test our pid, then take a long time
        os.write(args[0], b"%d\n" % os.getpid())
        time.sleep(args[1])
        return "woke"
    if op == "block":  # tell the test we started, then wait for its go
        os.write(args[0], b"%d\n" % os.getpid())
        os.read(args[1], 1)
        return os.getpid()
    if op == "fork_and_sleep":  # a grandchild inherits every fd, the sentinel pipe too
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(30)
            os._exit(0)
        os.write(args[0], b"%d %d\n" % (os.getpid(), grandchild))
        time.sleep(60)
    if op == "exit":
        os._exit(args[0])
    if op == "soft":
        arm_timeout(args[0])
        time.sleep(args[1])
        return "finished"
    if op == "arm_and_return":
        arm_timeout(args[0])
        return "ok"
    if op == "sleep":
        time.sleep(args[0])
        return "slept"
    if op == "hard":  # deaf to SIGALRM: only the parent's kill can stop it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        arm_timeout(args[0])
        time.sleep(args[1])
        return "unreachable"
    if op == "alloc":
        _hoard.append(b"\x01" * args[0])
        return os.getpid()
    if op == "unpicklable":
        return lambda: None
    raise AssertionError(f"unknown op {op!r}")


class Results:
    """Polls a pool, keeping every Done by key; each key must come back exactly once."""

    def __init__(self, pool: SupervisedPool) -> None:
        self.pool = pool
        self.got: dict[Any, Done] = {}

    def poll(self, timeout: float, also_wait: list[Any] | None = None) -> None:
        for d in self.pool.poll(timeout, also_wait or ()):
            assert d.key not in self.got, f"key {d.key!r} returned twice"
            self.got[d.key] = d

    def until(self, n: int, timeout: float = 20.0) -> dict[Any, Done]:
        """Poll until n results in all have arrived, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.got)} of {n} results before the deadline"
            self.poll(min(left, 1.0))
        return self.got

    def read_pids(self, fd: int, timeout: float = 10.0) -> list[int]:
        """Keep the pool running until a child writes a line of pids to fd."""
        deadline = time.monotonic() + timeout
        while not select.select([fd], [], [], 0)[0]:
            assert time.monotonic() < deadline, "the child never announced itself"
            self.poll(1.0, also_wait=[fd])
        line = b""
        while not line.endswith(b"\n"):
            line += os.read(fd, 1)
        return [int(p) for p in line.split()]

    def read_pid(self, fd: int, timeout: float = 10.0) -> int:
        return self.read_pids(fd, timeout)[0]


def collect(pool: SupervisedPool, n: int, timeout: float = 20.0) -> dict[Any, Done]:
    return Results(pool).until(n, timeout)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def wait_for_pids(pool: SupervisedPool, n: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pool.pids) != n:
        assert time.monotonic() < deadline, f"pool has {pool.pids}, wanted {n} children"
        pool.poll(0.05)
    return pool.pids


def test_many_trivial_jobs_each_returned_once() -> None:
    with SupervisedPool(2, run) as pool:
        pool.submit(Job(i, ("id", i * 2)) for i in range(20_000))
        assert pool.in_flight == 20_000
        out = collect(pool, 20_000)
        assert all(out[i].value == i * 2 and out[i].error is None for i in range(20_000))
        assert pool.in_flight == 0 and pool.queued == 0
        assert pool.idle_capacity > 2  # short jobs: deeper pipelines


def test_exception_comes_back_as_error_info() -> None:
    with SupervisedPool(2, run) as pool:
        pool.submit([Job("bad", ("raise", "nope")), Job("good", ("id", 1)),
                     Job("unpicklable", ("unpicklable",))])
        out = collect(pool, 3)
    err = out["bad"].error
    assert err is not None and out["bad"].value is None
    assert (err.type_name, err.message, err.cause) == ("KeyError", "'nope'", "exception")
    assert "Traceback" in err.traceback and "raise KeyError" in err.traceback
    assert out["good"].value == 1 and out["good"].error is None
    bad_value = out["unpicklable"].error
    assert bad_value is not None and bad_value.cause == "exception"


def test_unpicklable_payload_fails_its_job_only() -> None:
    with SupervisedPool(1, run) as pool:
        pool.submit([Job("lambda", ("id", lambda: 1)), Job("fine", ("id", 2))])
        out = collect(pool, 2)
    assert out["lambda"].error is not None and out["fine"].value == 2


def test_initializer_runs_in_every_child_including_replacements() -> None:
    with SupervisedPool(1, run, initializer=init_record_pid) as pool:
        pool.submit([Job(0, ("init_pid",))])
        pid, init_pid = collect(pool, 1)[0].value
        assert pid == init_pid
        os.kill(pid, signal.SIGKILL)
        pool.submit([Job(1, ("init_pid",))])
        new_pid, new_init_pid = collect(pool, 1)[1].value
        assert new_pid == new_init_pid != pid


def test_sigkill_mid_job_loses_only_that_job(pipe: tuple[int, int]) -> None:
    r, w = pipe
    with SupervisedPool(2, run) as pool:
        pool.submit([Job("victim", ("announce_sleep", w, 60))])
        pool.submit(Job(i, ("id", i)) for i in range(2000))
        res = Results(pool)
        victim = res.read_pid(r)
        os.kill(victim, signal.SIGKILL)
        out = res.until(2001)
        err = out["victim"].error
        assert err is not None and err.cause == "lost" and err.type_name == "WorkerLostError"
        assert err.message == (
            f"pool process {victim} was killed by signal SIGKILL while running the task")
        assert all(out[i].value == i and out[i].error is None for i in range(2000))
        pids = wait_for_pids(pool, 2)
        assert victim not in pids


def test_death_is_seen_even_if_a_grandchild_holds_its_fds(pipe: tuple[int, int]) -> None:
    r, w = pipe
    with SupervisedPool(1, run) as pool:
        pool.submit([Job("forker", ("fork_and_sleep", w))])
        res = Results(pool)
        child, grandchild = res.read_pids(r)
        try:
            t0 = time.monotonic()
            os.kill(child, signal.SIGKILL)
            err = res.until(1, timeout=5)["forker"].error
            assert err is not None and err.cause == "lost" and "SIGKILL" in err.message
            assert time.monotonic() - t0 < 2
        finally:
            os.kill(grandchild, signal.SIGKILL)


def test_exit_code_is_reported() -> None:
    with SupervisedPool(2, run) as pool:
        pool.submit([Job("exit", ("exit", 3))] + [Job(i, ("id", i)) for i in range(100)])
        out = collect(pool, 101)
        err = out["exit"].error
        assert err is not None and err.cause == "lost"
        assert "exited with code 3 while running the task" in err.message
        assert all(out[i].value == i for i in range(100))
        wait_for_pids(pool, 2)


def test_idle_child_killed_is_replaced() -> None:
    with SupervisedPool(2, run) as pool:
        first = wait_for_pids(pool, 2)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first[0] in pool.pids or len(pool.pids) != 2:
            assert time.monotonic() < deadline
            pool.poll(0.1)
        pool.submit(Job(i, ("pid",)) for i in range(500))
        out = collect(pool, 500)
        assert first[0] not in {d.value for d in out.values()}


def test_soft_timeout_raises_inside_the_job() -> None:
    with SupervisedPool(1, run) as pool:
        pool.submit([Job("slow", ("soft", 0.2, 10)), Job("armed", ("arm_and_return", 0.2)),
                     Job("after", ("sleep", 0.5))])
        out = collect(pool, 3)
    err = out["slow"].error
    assert err is not None and err.type_name == "TaskTimeoutError" and err.cause == "exception"
    assert "0.2 s time limit" in err.message
    assert 0.15 < out["slow"].duration < 2
    # the pool disarms the timer when a job ends: the next job is not hit by it
    assert out["armed"].value == "ok" and out["after"].value == "slept"


def test_hard_timeout_kills_only_the_overrunning_child() -> None:
    with SupervisedPool(2, run, hard_timeout_grace=0.5) as pool:
        wait_for_pids(pool, 2)
        t0 = time.monotonic()
        pool.submit([Job("deaf", ("hard", 0.3, 30))])
        pool.submit(Job(i, ("sleep", 0.002)) for i in range(200))
        out = collect(pool, 201)
        err = out["deaf"].error
        assert err is not None and err.cause == "timeout" and err.type_name == "TaskTimeoutError"
        assert "killed after" in err.message
        assert 0.75 <= time.monotonic() - t0 < 5
        assert all(out[i].value == "slept" for i in range(200))
        wait_for_pids(pool, 2)


def test_max_tasks_per_child_recycles() -> None:
    with SupervisedPool(2, run, max_tasks_per_child=3) as pool:
        pool.submit(Job(i, ("pid",)) for i in range(30))
        out = collect(pool, 30)
        pids = [d.value for d in out.values()]
        assert all(pids.count(p) <= 3 for p in pids)
        assert len(set(pids)) >= 10
        wait_for_pids(pool, 2)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_max_memory_per_child_recycles() -> None:
    limit = _rss() + 64 * 1024 * 1024
    with SupervisedPool(1, run, max_memory_per_child=limit) as pool:
        pool.submit([Job("small", ("pid",))])
        small = collect(pool, 1)["small"].value
        pool.submit([Job("big", ("alloc", 128 * 1024 * 1024))])
        pool.submit(Job(i, ("pid",)) for i in range(20))
        out = collect(pool, 21)
        assert out["big"].value == small and out["big"].error is None
        assert all(out[i].value != small for i in range(20))
        wait_for_pids(pool, 1)


def test_initializer_failure_raises_pool_init_error() -> None:
    with SupervisedPool(2, run, initializer=init_fail) as pool:
        pool.submit([Job(1, ("id", 1))])
        deadline = time.monotonic() + 20
        with pytest.raises(PoolInitError) as info:
            while time.monotonic() < deadline:
                pool.poll(1.0)
        with pytest.raises(PoolInitError):  # the pool stays broken and stops respawning
            pool.poll(0)
        assert pool.queued == 1  # the job was never handed to a child that failed to start
    assert isinstance(info.value, TaskqError)
    message = str(info.value)
    assert "ValueError: no database for you" in message and "\n" not in message


def test_initializer_that_kills_its_process_raises_pool_init_error() -> None:
    with SupervisedPool(1, run, initializer=init_exit) as pool:
        deadline = time.monotonic() + 20
        with pytest.raises(PoolInitError, match="exited with code 7 during initialization"):
            while time.monotonic() < deadline:
                pool.poll(1.0)


def test_withdraw_queued_returns_unsent_jobs(pipe: tuple[int, int]) -> None:
    r, w = pipe
    go_r, go_w = os.pipe()
    try:
        with SupervisedPool(1, run) as pool:
            pool.submit([Job("blocker", ("block", w, go_r))])
            pool.submit(Job(i, ("id", i)) for i in range(10))
            Results(pool).read_pid(r)
            withdrawn = pool.withdraw_queued()
            assert pool.queued == 0
            assert {j.key for j in withdrawn} == set(range(10))
            assert pool.in_flight == 1
            os.write(go_w, b"x")
            assert "blocker" in collect(pool, 1)
            assert pool.in_flight == 0
    finally:
        os.close(go_r)
        os.close(go_w)


def test_long_job_does_not_hold_up_short_ones(pipe: tuple[int, int]) -> None:
    r, w = pipe
    go_r, go_w = os.pipe()
    try:
        with SupervisedPool(2, run) as pool:
            wait_for_pids(pool, 2)
            pool.submit([Job("slow", ("block", w, go_r))])
            pool.submit(Job(i, ("pid",)) for i in range(3000))
            res = Results(pool)
            slow_pid = res.read_pid(r)
            out = res.until(3000)  # all while the slow job is still running
            assert "slow" not in out and slow_pid not in {d.value for d in out.values()}
            os.write(go_w, b"x")
            assert res.until(3001)["slow"].value == slow_pid
    finally:
        os.close(go_r)
        os.close(go_w)


def test_poll_returns_when_also_wait_is_ready() -> None:
    a, b = socket.socketpair()
    with a, b, SupervisedPool(1, run) as pool:
        wait_for_pids(pool, 1)
        b.send(b"x")
        t0 = time.monotonic()
        assert pool.poll(10.0, also_wait=[a]) == []
        assert time.monotonic() - t0 < 1.0


def test_close_finishes_held_jobs_and_stops_children() -> None:
    pool = SupervisedPool(2, run)
    pool.start()
    pids = wait_for_pids(pool, 2)
    pool.submit(Job(i, ("sleep", 0.05)) for i in range(10))
    res = Results(pool)
    res.until(1)  # the children are up and hold jobs
    held = pool.in_flight - pool.queued
    assert held >= 1
    pool.close(timeout=10)
    res.poll(0)
    assert all(d.error is None for d in res.got.values())
    assert len(res.got) >= 1 + held
    assert set(res.got) | {j.key for j in pool.withdraw_queued()} == set(range(10))
    assert pool.pids == [] and pool.in_flight == 0
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_terminate_leaves_no_children(pipe: tuple[int, int]) -> None:
    r, w = pipe
    pool = SupervisedPool(2, run)
    pool.start()
    pool.submit([Job("a", ("announce_sleep", w, 60)), Job("b", ("announce_sleep", w, 60))])
    res = Results(pool)
    pids = {res.read_pid(r), res.read_pid(r)}
    pool.terminate()
    assert pool.pids == []
    lost = {d.key: d.error for d in pool.poll(0)}
    assert set(lost) == {"a", "b"} and all(e and e.cause == "lost" for e in lost.values())
    psutil = pytest.importorskip("psutil")
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie
        assert not psutil.pid_exists(pid)


def test_big_payloads_and_results_do_not_deadlock() -> None:
    with SupervisedPool(2, run) as pool:
        pool.submit(Job(i, ("id", bytes(300_000))) for i in range(60))
        out = collect(pool, 60)
    assert all(len(d.value) == 300_000 for d in out.values())


def test_arm_timeout_outside_a_pool_job_is_a_no_op() -> None:
    # pytest-timeout may own ITIMER_REAL here: armed, arm_timeout would replace it by a
    # 1 ms timer (and disarming would zero it); a no-op leaves it running as it was.
    assert not pool_module.in_pool_process()
    before, _ = signal.getitimer(signal.ITIMER_REAL)
    arm_timeout(0.001)
    armed, _ = signal.getitimer(signal.ITIMER_REAL)
    arm_timeout(None)
    after, _ = signal.getitimer(signal.ITIMER_REAL)
    assert armed == 0.0 if before == 0.0 else before - 1.0 < armed <= before
    assert after == 0.0 if before == 0.0 else before - 1.0 < after <= armed


_ORPHAN_SCRIPT = """
import time
from taskq.node.pool import Job, SupervisedPool
pool = SupervisedPool(2, time.sleep)
pool.start()
pool.submit([Job(0, 60), Job(1, 60)])  # both children busy: only PDEATHSIG can stop them
while pool.queued:
    pool.poll(1.0)
print(" ".join(map(str, pool.pids)), flush=True)
time.sleep(60)
"""


def test_children_die_with_a_sigkilled_parent() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(pool_module.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], env=env,
                              stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        pidfds = [os.pidfd_open(pid) for pid in pids]  # readable once the process exits
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    try:
        deadline = time.monotonic() + 10
        pending = list(pidfds)
        while pending:
            left = deadline - time.monotonic()
            assert left > 0, "pool children outlived their SIGKILLed parent"
            ready, _, _ = select.select(pending, [], [], left)
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in pidfds:
            os.close(fd)
