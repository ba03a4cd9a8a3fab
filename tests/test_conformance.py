"""The same assertions against the stdlib (ProcessPoolExecutor, multiprocessing.Pool) and
taskq (Executor, Pool in local mode): ordering, exceptions, timeouts, cancellation,
as_completed, callbacks, close/join/terminate, initializers, unpicklable callables.

One executor and one pool of each kind are shared by the module; tests that need
special constructor arguments make their own.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent import futures as cf
from typing import Any

import pytest

import taskq

pytestmark = pytest.mark.timeout(60)
KINDS = ["stdlib", "taskq"]


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def os_getpid(_: Any = None) -> int:
    return os.getpid()


def uses_lock(lock: Any, x: int) -> int:  # partial(uses_lock, threading.Lock()) cannot pickle
    return x


_setting: Any = None


def remember(value: Any) -> None:
    global _setting
    _setting = value


def recall(_: Any = None) -> Any:
    return _setting


def remember_in_this_process(value: Any) -> None:
    """An initializer that records which process ran it."""
    global _setting
    _setting = (value, os.getpid())


def recall_with_pid(_: Any = None) -> tuple[Any, int]:
    time.sleep(0.05)  # long enough that every process gets some of the tasks
    return _setting, os.getpid()


def _every_process_ran_the_initializer(results: list[tuple[Any, int]], procs: int) -> None:
    """Each task saw the marker its own process's initializer set (an initializer run
    once in a parent and inherited by forked children would show the parent's pid)."""
    pids = {pid for _, pid in results}
    assert len(pids) == procs  # really several processes
    assert all(setting == ("ready", pid) for setting, pid in results), results


def make_executor(kind: str, **kw: Any) -> cf.Executor:
    return cf.ProcessPoolExecutor(**kw) if kind == "stdlib" else taskq.Executor(**kw)


def make_pool(kind: str, *args: Any, **kw: Any) -> Any:
    return multiprocessing.get_context("fork").Pool(*args, **kw) if kind == "stdlib" else (
        taskq.Pool(*args, **kw))


@pytest.fixture(scope="module", params=KINDS)
def executor(request: pytest.FixtureRequest) -> Iterator[cf.Executor]:
    with make_executor(request.param, max_workers=2) as ex:
        yield ex


@pytest.fixture(scope="module", params=KINDS)
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    with make_pool(request.param, 2) as p:
        yield p


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- Executor -------------------------------------------------------------------------------


def test_submit_and_map_keep_order(executor: cf.Executor) -> None:
    assert executor.submit(add, 2, b=3).result(timeout=30) == 5
    assert list(executor.map(square, range(20))) == [x * x for x in range(20)]
    assert list(executor.map(add, range(5), range(10, 20), chunksize=2)) == [10, 12, 14, 16, 18]
    assert list(executor.map(square, [])) == []


def test_exceptions_propagate_with_their_type(executor: cf.Executor) -> None:
    fut = executor.submit(fail_on, 3)
    with pytest.raises(ValueError, match="bad item 3"):
        fut.result(timeout=30)
    assert isinstance(fut.exception(), ValueError)
    results = executor.map(fail_on, range(6))
    assert [next(results), next(results), next(results)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)


def test_result_and_map_timeouts(executor: cf.Executor) -> None:
    fut = executor.submit(nap, 0.5, "late")
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.05)
    assert fut.result(timeout=30) == "late"
    results = executor.map(nap, [0.5, 0.5], timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        list(results)


def test_as_completed_yields_in_completion_order(executor: cf.Executor) -> None:
    slow = executor.submit(nap, 0.6, "slow")
    fast = executor.submit(nap, 0.0, "fast")
    order = [f.result() for f in cf.as_completed([slow, fast], timeout=30)]
    assert order == ["fast", "slow"]
    done, not_done = cf.wait([slow, fast], timeout=30)
    assert done == {slow, fast} and not not_done


def test_done_callbacks_run(executor: cf.Executor) -> None:
    seen = threading.Event()
    got: list[Any] = []
    fut = executor.submit(square, 7)
    fut.add_done_callback(lambda f: (got.append(f.result()), seen.set()))
    assert seen.wait(30) and got == [49]


def test_unpicklable_callable_fails_its_future(executor: cf.Executor) -> None:
    fut = executor.submit(functools.partial(uses_lock, threading.Lock()), 1)
    with pytest.raises((TypeError, pickle.PicklingError)):
        fut.result(timeout=30)
    assert executor.submit(square, 3).result(timeout=30) == 9  # still usable


def test_cancel_a_pending_future_and_shutdown(kind: str) -> None:
    ex = make_executor(kind, max_workers=1)
    running = ex.submit(nap, 0.4, "first")
    queued = [ex.submit(nap, 0.0, i) for i in range(4)]
    assert queued[-1].cancel()
    assert queued[-1].cancelled() and queued[-1].done()
    with pytest.raises(cf.CancelledError):
        queued[-1].result()
    assert running.result(timeout=30) == "first"
    assert [f.result(timeout=30) for f in queued[:-1]] == [0, 1, 2]
    late = [ex.submit(nap, 0.3, i) for i in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in late) and any(f.cancelled() for f in late)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_executor_initializer_runs_in_every_process(kind: str) -> None:
    with make_executor(kind, max_workers=2, initializer=remember_in_this_process,
                       initargs=("ready",)) as ex:
        futures = [ex.submit(recall_with_pid) for _ in range(8)]
        _every_process_ran_the_initializer([f.result(timeout=30) for f in futures], 2)


# -- Pool -----------------------------------------------------------------------------------


def test_pool_map_family_keeps_order(pool: Any) -> None:
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    assert pool.map(square, range(50), chunksize=7) == [x * x for x in range(50)]
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.map(square, []) == []
    assert list(pool.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(square, range(10))) == [x * x for x in range(10)]
    assert pool.map_async(square, range(5)).get(timeout=30) == [0, 1, 4, 9, 16]
    assert pool.starmap_async(add, [(1, 1)]).get(timeout=30) == [2]
    assert pool.apply(add, (1,), {"b": 2}) == 3


def test_pool_exceptions_propagate(pool: Any) -> None:
    with pytest.raises(ValueError, match="bad item 3"):
        pool.apply(fail_on, (3,))
    with pytest.raises(ValueError, match="bad item 3"):
        pool.map(fail_on, range(10))
    result = pool.apply_async(fail_on, (3,))
    result.wait(30)
    assert result.ready() and not result.successful()
    with pytest.raises(ValueError):
        result.get()
    it = pool.imap(fail_on, range(6))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [4, 5]  # the stdlib goes on after a failed item


def test_async_result_timeouts(pool: Any) -> None:
    result = pool.apply_async(nap, (0.5, "late"))
    with pytest.raises(ValueError):
        result.successful()  # not ready yet
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    result.wait(0.01)
    assert not result.ready()
    assert result.get(timeout=30) == "late" and result.successful()
    it = pool.imap(nap, [0.5])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=30) is None


def test_callbacks(pool: Any) -> None:
    done = threading.Event()
    got: list[Any] = []

    def keep(value: Any) -> None:
        got.append(value)
        if len(got) == 3:
            done.set()

    pool.apply_async(square, (4,), callback=keep)
    pool.apply_async(fail_on, (3,), error_callback=lambda e: keep(type(e).__name__))
    pool.map_async(square, [1, 2], callback=keep)
    assert done.wait(30)
    assert sorted(map(str, got)) == ["16", "ValueError", "[1, 4]"]


def test_unpicklable_callable_fails_in_the_pool(pool: Any) -> None:
    bad = functools.partial(uses_lock, threading.Lock())
    with pytest.raises((TypeError, pickle.PicklingError)):
        pool.apply_async(bad, (1,)).get(timeout=30)
    with pytest.raises((TypeError, pickle.PicklingError)):
        pool.map(bad, [1, 2])


def test_close_join_terminate(kind: str) -> None:
    p = make_pool(kind, 2)
    pending = [p.apply_async(nap, (0.2, i)) for i in range(4)]
    with pytest.raises(ValueError):
        p.join()  # still running
    p.close()
    with pytest.raises(ValueError):
        p.apply_async(square, (1,))
    p.join()
    assert [r.get(timeout=0) for r in pending] == [0, 1, 2, 3]
    p.terminate()

    p = make_pool(kind, 1)
    p.apply_async(nap, (5,))
    started = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - started < 4
    with pytest.raises(ValueError):
        p.apply(square, (1,))


def test_pool_initializer_sets_a_global_the_tasks_read(kind: str) -> None:
    with make_pool(kind, 2, initializer=remember, initargs=({"multiplier": 10},)) as p:
        assert p.map(recall, range(6)) == [{"multiplier": 10}] * 6
        assert p.apply(recall) == {"multiplier": 10}


def test_pool_initializer_runs_in_every_process(kind: str) -> None:
    with make_pool(kind, 2, initializer=remember_in_this_process, initargs=("ready",)) as p:
        _every_process_ran_the_initializer(p.map(recall_with_pid, range(8), chunksize=1), 2)


def test_maxtasksperchild_replaces_processes(kind: str) -> None:
    with make_pool(kind, 1, maxtasksperchild=1) as p:
        assert len(set(p.map(os_getpid, range(3), chunksize=1))) == 3


def test_bad_arguments_are_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        make_pool(kind, 0)
    with pytest.raises(ValueError):
        make_executor(kind, max_workers=0)

