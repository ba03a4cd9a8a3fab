"""Drop-in fidelity (issue 9): taskq's errors are the stdlib's types where the stdlib
raises them, nothing a result's payload does stops a client's reply listener, an unclosed
Pool warns, a ``__main__`` class holding a lock travels, tracebacks of by-value functions
name their real file and line, nothing keeps a submitted callable or a yielded result
alive, and an Executor nobody references is shut down."""

from __future__ import annotations

import gc
import json
import linecache
import os
import pickle
import subprocess
import sys
import threading
import warnings
import weakref
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import orjson
import pytest

import taskq
from taskq import signed
from taskq.errors import WorkerLostError
from taskq.local import lifetime
from taskq.node import signed_runner

TESTS = Path(__file__).parent
SECRET = "fidelity-tests-" + "f" * 32
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")},
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "TASKQ_SECRET": SECRET}


class ExitOnLoad:
    """A result whose unpickling raises SystemExit (on the producer)."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (sys.exit, (3,))


class ExitOnDump:
    """A result whose pickling raises SystemExit (on the worker)."""

    def __reduce__(self) -> Any:
        raise SystemExit(1)


def exit_on_load() -> ExitOnLoad:
    return ExitOnLoad()


def exit_on_dump() -> ExitOnDump:
    return ExitOnDump()


def die() -> None:
    os._exit(7)


def test_worker_lost_is_broken_process_pool() -> None:
    err = WorkerLostError("exit code 7")
    assert isinstance(err, BrokenProcessPool) and isinstance(err, taskq.TaskError)


@pytest.mark.timeout(60)
def test_the_listener_survives_system_exit_while_loading_a_result(redis_url: str) -> None:
    with taskq.Executor(redis_url, secret=SECRET) as ex:
        bad, dumped, lost, good = (ex.submit(exit_on_load), ex.submit(exit_on_dump),
                                   ex.submit(die), ex.submit(pow, 2, 10))
        ex.client.flush(10)
        done = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "worker",
                               "--procs", "1", "--burst", "--import", "test_fidelity"],
                              env=ENV, capture_output=True, text=True, timeout=50)
        assert done.returncode == 0, done.stderr
        assert good.result(timeout=20) == 1024  # the listener lived on past the bad result
        with pytest.raises(taskq.TaskError, match="cannot load the result"):
            bad.result(timeout=20)
        with pytest.raises(SystemExit):  # as the stdlib: the pickling error itself
            dumped.result(timeout=20)
        with pytest.raises(BrokenProcessPool):  # what code written for the stdlib catches
            lost.result(timeout=20)


# -- an unclosed running Pool warns, as the stdlib ----------------------------------------


def test_an_unclosed_running_pool_warns_when_collected(redis_url: str) -> None:
    pool = taskq.Pool(url=redis_url, secret=SECRET)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()
    closed = taskq.Pool(url=redis_url, secret=SECRET)
    closed.close()
    closed.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # a closed pool is silent
        del closed
        gc.collect()


# -- classes sent by value: class attributes that cannot travel ---------------------------


def test_a_classmethod_of_a_class_holding_a_lock_pickles_without_the_lock() -> None:
    class Guarded:  # a local class: pickled by value, like a __main__ one
        guard = threading.Lock()
        scale = 3

        def __init__(self) -> None:
            self.lock = threading.Lock()

        @classmethod
        def triple(cls, x: int) -> int:
            return cls.scale * x

        def plain(x: int) -> int:
            return Guarded.triple(x) + 1

        def fresh(x: int) -> bool:
            return isinstance(Guarded().lock, type(threading.Lock()))

    context = signed.Context("ns")
    triple = pickle.loads(context.function_blob(Guarded.triple))
    plain = pickle.loads(context.function_blob(Guarded.plain))
    fresh = pickle.loads(context.function_blob(Guarded.fresh))
    assert (triple(2), plain(2), fresh(0)) == (6, 7, True)  # instances make their own lock
    # In a fresh interpreter (here cloudpickle would hand back the original class):
    probe = ("import pickle, sys\nf = pickle.loads(sys.stdin.buffer.read())\n"
             "try:\n    f.__self__.guard\nexcept AttributeError as e:\n    print(f(5), e)\n")
    done = subprocess.run([sys.executable, "-c", probe], input=context.function_blob(Guarded.triple),
                          capture_output=True, timeout=30)
    assert done.stdout.decode().strip() == (
        "15 test_a_classmethod_of_a_class_holding_a_lock_pickles_without_the_lock.<locals>."
        "Guarded.guard was not sent to the worker: cannot pickle '_thread.lock' object "
        "(class attributes of a class sent by value must pickle)"), done.stderr
    with pytest.raises(TypeError, match="cannot pickle"):  # a lock as an argument still fails
        context.payload(pow, signed.CALL, ((threading.Lock(), 2), {}))


MAIN_SCRIPT = '''\
import json, sys, threading, traceback
import taskq

class Locked:
    registry = threading.Lock()

    def __init__(self):
        self.lock = threading.Lock()

    @classmethod
    def double(cls, x):
        return 2 * x

    def plain(x):
        return Locked.double(x) + 1

def boom(x):
    raise ValueError(f"boom {x}")

if __name__ == "__main__":
    out = {}
    with taskq.Pool(1) as pool:
        out["pool"] = [pool.apply(Locked.double, (3,)), pool.map(Locked.plain, [1, 2])]
        try:
            pool.apply(boom, (1,))
        except ValueError as exc:
            out["tb"] = str(exc.__cause__)
    with taskq.Executor(1) as ex:
        out["executor"] = [ex.submit(Locked.double, 4).result(), list(ex.map(Locked.plain, [3]))]
    json.dump(out, sys.stdout)
'''


@pytest.fixture(scope="module")
def main_script_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """MAIN_SCRIPT run as ``__main__`` in local mode (its own embedded Redis and node)."""
    script = tmp_path_factory.mktemp("main") / "app.py"
    script.write_text(MAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    out["script"] = str(script)
    return out


@pytest.mark.timeout(60)
def test_a_classmethod_of_a_main_class_whose_instances_hold_a_lock(
        main_script_run: dict[str, Any]) -> None:
    assert main_script_run["pool"] == [6, [3, 5]]
    assert main_script_run["executor"] == [8, [7]]


# -- remote tracebacks of by-value functions keep their file, line and source -------------


@pytest.mark.timeout(60)
def test_a_main_function_traceback_names_its_file_and_line(main_script_run: dict[str, Any]) -> None:
    tb = main_script_run["tb"]
    assert f'File "{main_script_run["script"]}", line 18, in boom' in tb, tb
    assert 'raise ValueError(f"boom {x}")' in tb, tb
    assert "<dynamic-code>" not in tb


def test_the_source_lines_travel_with_a_by_value_function(tmp_path: Path) -> None:
    """The worker has no copy of the producer's file: the lines come with the payload."""
    path = tmp_path / "producer_only.py"
    source = "import math\n\n\ndef boom(x):\n    y = math.sqrt(x)\n    raise ValueError(y)\n"
    path.write_text(source)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, str(path), "exec"), namespace)
    payload = signed.Context("tb").payload(namespace["boom"], signed.CALL, ((4,), {}))
    path.unlink()
    linecache.clearcache()
    ran = signed_runner.run("t-1", payload, SECRET.encode())
    tb = orjson.loads(ran.outcome)["e"][2]
    assert f'File "{path}", line 6, in boom' in tb, tb
    assert "raise ValueError(y)" in tb, tb


# -- no strong references to callables or to results already yielded ----------------------


class Holder:
    def __init__(self, n: int) -> None:
        self.n = n

    def add(self, x: int) -> int:
        return self.n + x


class Dummy:
    pass


def make_dummy(i: int) -> Dummy:
    return Dummy()


def test_the_function_cache_does_not_keep_bound_methods_alive() -> None:
    context = signed.Context("weak")
    holder = Holder(1)
    context.function_blob(holder.add)
    method = holder.add
    assert context.function_blob(method) is context.function_blob(method)  # still cached
    ref = weakref.ref(holder)
    del holder, method
    gc.collect()
    assert ref() is None


@pytest.mark.timeout(60)
def test_an_executor_frees_bound_methods_and_yielded_results(redis_url: str) -> None:
    with taskq.Executor(redis_url, secret=SECRET) as ex:
        holder = Holder(10)
        first = ex.submit(holder.add, 1)
        mapped = ex.map(holder.add, [1, 2], chunksize="auto")
        dummies = ex.map(make_dummy, range(6), chunksize=2)
        ex.client.flush(10)
        done = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "worker",
                               "--procs", "1", "--burst", "--import", "test_fidelity"],
                              env=ENV, capture_output=True, text=True, timeout=50)
        assert done.returncode == 0, done.stderr
        assert first.result(timeout=20) == 11 and list(mapped) == [11, 12]
        ref = weakref.ref(holder)
        del holder
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())
        for obj in dummies:  # as the stdlib's test_free_reference
            obj_ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert obj_ref() is None


# -- an Executor nobody references is shut down -------------------------------------------


@pytest.mark.timeout(60)
def test_a_collected_executor_stops_its_local_redis_and_node() -> None:
    ex = taskq.Executor(max_workers=1)
    assert ex.submit(pow, 2, 5).result(timeout=30) == 32
    cluster = ex._backend.cluster
    assert cluster is not None
    node, server = cluster.node, cluster.server._proc
    assert node is not None and server is not None
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None
    assert node.wait(timeout=30) is not None  # both went without waiting for an exit hook
    assert server.wait(timeout=30) is not None
    assert not any(getattr(cb, "__self__", None) is cluster for _, cb in lifetime.pending())
