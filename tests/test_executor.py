"""taskq.Executor / taskq.Pool beyond the stdlib's behaviour: signed payloads and what a
worker refuses, faithful round trips, per-Pool initializer namespaces on a remote node,
lazy bounded imap, shared Value/Lock exactness across processes."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import Broker
from taskq.message import TaskMessage, stream_fields

pytestmark = pytest.mark.timeout(90)
SECRET = "s3cret-for-tests-0123456789abcdef0123"
TESTS = str(Path(__file__).resolve().parent)
# Remote nodes can import this module (so functions travel by reference) but run elsewhere.
ENV = {**{k: v for k, v in os.environ.items() if k not in ("TASKQ_URL", "TASKQ_SECRET")},
       "PYTHONPATH": TESTS}


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def describe(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value


class Evil:
    """Unpickling this runs code: the payload a worker must never load unsigned."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (touch, (self.path,))


def start_node(url: str, secret: str | None, procs: int = 1) -> subprocess.Popen[bytes]:
    env = {**ENV, **({"TASKQ_SECRET": secret} if secret else {})}
    return subprocess.Popen([sys.executable, "-m", "taskq", "--url", url, "worker", "--procs",
                             str(procs), "--log-level", "warning"], env=env, cwd="/")


@pytest.fixture
def node(redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_node(redis_url, SECRET)
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local_pool() -> Iterator[taskq.Pool]:
    with taskq.Pool(2) as pool:
        yield pool


def wait_for(predicate: Any, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# -- what travels, and how ------------------------------------------------------------------


def test_pickled_values_come_back_exactly(local_pool: taskq.Pool) -> None:
    values = [(1, 2), {1, 2}, b"\x00\xff", Point(1, 2), frozenset({"a"}), {(1, 2): 3}, 2**70]
    assert local_pool.map(describe, values) == [(type(v).__name__, v) for v in values]
    assert local_pool.apply(lambda p: Point(p.y, p.x), (Point(1, 2),)) == Point(2, 1)
    factor = 3
    assert local_pool.map(lambda x: x * factor, [1, 2]) == [3, 6]  # closures, lambdas


def test_registered_tasks_travel_as_json_without_a_secret(redis_url: str) -> None:
    proc = start_node(redis_url, None, procs=1)
    try:
        with taskq.Executor(redis_url, secret=None) as ex:
            assert ex.submit("primes", 0, 1000).result(timeout=30) == 168
            assert list(ex.map("primes", [0, 1000], [1000, 2000])) == [168, 135]
            with pytest.raises(taskq.SignatureError, match="TASKQ_SECRET"):
                ex.submit(describe, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_with_another_secret_refuses_and_sends_no_reply_the_producer_would_take(
        redis_url: str, node: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """It cannot sign its dead letter for the producer's key, and a producer with a secret
    takes only signed replies (else anyone could answer for it): the dead letter says why."""
    marker = tmp_path / "ran"
    broker = Broker(redis_lib.Redis.from_url(redis_url), "default")
    ex = taskq.Executor(redis_url, secret="not-the-same-" + "s" * 32)
    fut = ex.submit(touch, str(marker))
    wait_for(lambda: broker.info()["dead"] == 1)
    with pytest.raises(TimeoutError):
        fut.result(timeout=1)
    ex.shutdown(wait=False, cancel_futures=True)
    (_, fields), = broker.dead_entries()
    assert b"untrusted payload" in fields[b"reason"]
    assert b"signature does not match" in fields[b"reason"]
    assert not marker.exists()


def test_unsigned_or_forged_pickles_are_never_loaded(
        redis_url: str, node: subprocess.Popen[bytes], tmp_path: Path) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    broker = Broker(r, "default")
    broker.ensure_group()
    evil = pickle.dumps(Evil(str(tmp_path / "worker-ran")))
    body = TaskMessage(id="evil-1", task="pickled:x.y", payload=evil).encode()
    r.xadd(broker.keys.stream, stream_fields(body))  # type: ignore[arg-type]
    r.xadd(broker.keys.stream, stream_fields(body, b"0" * 64))  # type: ignore[arg-type]
    wait_for(lambda: broker.info()["dead"] == 2)
    reasons = sorted(f[b"reason"].decode() for _, f in broker.dead_entries())
    assert "not signed" in reasons[0] + reasons[1] and "does not match" in reasons[0] + reasons[1]
    assert not (tmp_path / "worker-ran").exists()

    # A forged pickled *result* in a producer's inbox is refused before unpickling.
    with taskq.Executor(redis_url, secret=SECRET) as ex:
        fut = ex.submit(time.sleep, 1)
        task_id = fut.task_id  # type: ignore[attr-defined]
        text = base64.b64encode(pickle.dumps(Evil(str(tmp_path / "producer-ran")))).decode()
        forged = f'[{{"id": "{task_id}", "ok": true, "x": "{text}", "xs": "{"0" * 64}"}}]'
        r.lpush(broker.keys.inbox(ex.client.client_id), forged)
        assert fut.result(timeout=30) is None  # the forgery was skipped, the genuine reply taken
    assert not (tmp_path / "producer-ran").exists()


# -- initializers on a remote node ----------------------------------------------------------

_config: Any = None


def configure(value: Any) -> None:
    global _config
    _config = value


def read_config(_: Any = None) -> tuple[Any, int]:
    return _config, os.getpid()


def test_two_pools_initializers_do_not_clash_on_one_remote_process(
        redis_url: str, node: subprocess.Popen[bytes]) -> None:
    # One worker process serves both Pools; each Pool's tasks see its own initializer's
    # global, and the process's own module is untouched.
    a = taskq.Pool(initializer=configure, initargs=("a",), url=redis_url, secret=SECRET)
    b = taskq.Pool(initializer=configure, initargs=("b",), url=redis_url, secret=SECRET)
    try:
        for _ in range(3):
            (va, pid_a), (vb, pid_b) = a.apply(read_config), b.apply(read_config)
            assert (va, vb) == ("a", "b") and pid_a == pid_b
        assert {v for v, _ in a.map(read_config, range(20), chunksize=3)} == {"a"}
        plain = taskq.Pool(url=redis_url, secret=SECRET)
        assert plain.apply(read_config)[0] is None
        plain.terminate()
    finally:
        a.terminate()
        b.terminate()


# -- laziness -------------------------------------------------------------------------------


def test_imap_reads_its_input_lazily_with_a_bounded_window(local_pool: taskq.Pool) -> None:
    consumed = itertools.count()

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            next(consumed)
            yield i

    it = local_pool.imap(abs, numbers(), chunksize=10, window=3)
    assert [next(it) for _ in range(25)] == list(range(25))
    assert next(consumed) <= 10 * (3 + 3) + 1  # what was consumed, plus a refill or two
    unordered = local_pool.imap_unordered(abs, numbers(), chunksize="auto", window=2)
    assert len({next(unordered) for _ in range(100)}) == 100


def test_auto_chunks_grow_for_quick_tasks(local_pool: taskq.Pool) -> None:
    assert sum(local_pool.imap(abs, range(50_000), chunksize="auto")) == sum(range(50_000))
    assert local_pool._backend.chunker(abs).for_stream() > 100


# -- shared state ---------------------------------------------------------------------------


def count_up(counter: taskq.Value, lock: taskq.Lock, n: int) -> int:
    for _ in range(n):
        with lock:
            counter.value += 1
    return os.getpid()


def add_atomically(counter: taskq.Value, n: int) -> None:
    for _ in range(n):
        counter.increment()


def hold(lock: taskq.Lock, seconds: float) -> None:
    with lock:
        time.sleep(seconds)


def test_value_and_lock_are_exact_across_processes(local_pool: taskq.Pool) -> None:
    url = local_pool.client.url
    counter = taskq.Value("i", 0, url=url)
    lock = taskq.Lock(url=url)
    results = [local_pool.apply_async(count_up, (counter, lock, 3000)) for _ in range(4)]
    with lock:  # the producer takes part too
        counter.value += 1000
    pids = {r.get(timeout=60) for r in results}
    assert counter.value == 4 * 3000 + 1000
    assert len(pids) == 2  # really two processes contending

    total = taskq.Value("d", 0.5, url=url, lock=False)
    local_pool.starmap(add_atomically, [(total, 200)] * 4)
    assert total.value == 800.5
    with counter.get_lock():
        counter.value = 7
    assert taskq.Value("i", 0, name=counter.name, url=url, _attach=True).value == 7


def nested(x: taskq.Value, y: taskq.Value, a: taskq.Lock, b: taskq.Lock, n: int) -> None:
    for _ in range(n):
        with a:
            with b:
                x.value += 1
            y.value += 1
        with b:
            x.value += 1  # x is under b everywhere, y under a


def test_nested_locks_stay_exact(local_pool: taskq.Pool) -> None:
    url = local_pool.client.url
    x, y = taskq.Value("i", 0, url=url), taskq.Value("i", 0, url=url)
    a, b = taskq.Lock(url=url), taskq.Lock(url=url)
    results = [local_pool.apply_async(nested, (x, y, a, b, 1000)) for _ in range(3)]
    nested(x, y, a, b, 1000)
    for r in results:
        r.get(timeout=60)
    assert (x.value, y.value) == (8000, 4000)


def test_lock_timeouts_and_misuse(local_pool: taskq.Pool) -> None:
    lock = taskq.Lock(url=local_pool.client.url)
    held = local_pool.apply_async(hold, (lock, 1.0))
    time.sleep(0.5)
    started = time.monotonic()
    assert not lock.acquire(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2
    assert not lock.acquire(block=False)
    assert lock.acquire(timeout=30)  # handed over as soon as the holder releases
    lock.release()
    held.get(timeout=30)
    with pytest.raises(ValueError):
        lock.release()


def test_threads_of_one_process_share_a_lock_exactly(local_pool: taskq.Pool) -> None:
    url = local_pool.client.url
    counter, lock = taskq.Value("i", 0, url=url), taskq.Lock(url=url)
    threads = [threading.Thread(target=count_up, args=(counter, lock, 2000)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value == 6000


# -- local mode lifecycle -------------------------------------------------------------------


def test_local_node_death_fails_outstanding_futures() -> None:
    ex = taskq.Executor(max_workers=1)
    try:
        fut = ex.submit(time.sleep, 30)
        assert ex._backend.cluster is not None and ex._backend.cluster.node is not None
        time.sleep(0.5)
        ex._backend.cluster.node.kill()
        with pytest.raises(taskq.WorkerLostError, match="local worker node exited"):
            fut.result(timeout=20)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def test_process_reports_failures_and_is_joined_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "procs.py"
    marker = tmp_path / "late"
    script.write_text(f"""
import time
import taskq as multiprocessing

def boom():
    1 / 0

def late(path):
    time.sleep(0.5)
    open(path, "w").write("done")

if __name__ == "__main__":
    p = multiprocessing.Process(target=boom)
    p.start()
    p.join()
    print(p.exitcode, p.is_alive(), multiprocessing.cpu_count() >= 1)
    multiprocessing.Process(target=late, args=({str(marker)!r},)).start()  # never joined
""")
    done = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout == "1 False True\n", done.stderr
    assert "Process Process-1:" in done.stderr and "ZeroDivisionError" in done.stderr
    assert marker.read_text() == "done"  # non-daemon: waited for at exit, like the stdlib


def broken_init() -> None:
    raise RuntimeError("no config")


def test_a_failing_initializer_fails_the_tasks_clearly() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with taskq.Executor(max_workers=1, initializer=broken_init) as ex, \
            pytest.raises(BrokenProcessPool, match="initializer failed: RuntimeError"):
        ex.submit(abs, 1).result(timeout=30)
