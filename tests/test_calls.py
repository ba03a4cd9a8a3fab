"""How a call travels and what its options mean, whichever way it travels.

* the decision table of :func:`taskq.client.calls.route` (pure, no Redis);
* time limits and retry policies of calls that travel pickled, against a real node;
* one chunk rule (sys.exit() fails one item, JSON and pickled chunks alike) and one
  ChunkResult for every producer API;
* Executor and Pool honour TASKQ_QUEUE like a Client.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis as redis_lib

import taskq
from taskq import registry
from taskq.broker import Broker
from taskq.client import calls
from taskq.client.calls import CallOptions
from taskq.config import Settings
from taskq.outcome import ChunkResult

pytestmark = pytest.mark.timeout(90)
SECRET = "s3cret-for-call-tests-0123456789abcdef"
TESTS = str(Path(__file__).resolve().parent)
# The node imports this module (so its @task functions are registered there, in the
# parent too, and pickled functions travel by reference).
ENV = {**{k: v for k, v in os.environ.items() if k not in ("TASKQ_URL", "TASKQ_SECRET",
                                                            "TASKQ_QUEUE")},
       "PYTHONPATH": TESTS, "TASKQ_SECRET": SECRET}


@taskq.task(name="tests.calls.add")
def add(a: int, b: int) -> int:
    return a + b


@taskq.task(name="tests.calls.exits_on_two")
def exits_on_two(x: int) -> int:
    if x == 2:
        sys.exit(3)
    return x


@taskq.task(name="tests.calls.sleepy", timeout=0.5)
def sleepy(pair: Any) -> Any:
    time.sleep(pair[0])
    return pair


@taskq.task(name="tests.calls.fails_once", retries=1, retry_backoff=0.01)
def fails_once(marker: str, pair: Any) -> Any:
    """Fails its first attempt (the marker does not exist yet), then returns ``pair``."""
    if not os.path.exists(marker):
        Path(marker).write_text("attempt 1")
        raise ValueError("first attempt fails")
    return pair


@taskq.task(name="tests.calls.dies_once", retries=1, retry_backoff=0.01)
def dies_once(marker: str, pair: Any) -> Any:
    """Its process dies under its first attempt, then it returns ``pair``."""
    if not os.path.exists(marker):
        Path(marker).write_text("attempt 1")
        os._exit(1)
    return pair


@taskq.task(name="tests.calls.plain_task")
def plain_task(x: Any) -> Any:
    return x


def plain(x: Any) -> Any:
    return x


def exits_on_two_plain(x: int) -> int:
    if x == 2:
        sys.exit(3)
    return x


# -- the decision table (pure) ------------------------------------------------------------

NOT_JSON: list[Any] = [(1, 2), {1, 2}, b"\x00", {1: "a"}, math.nan, math.inf, 2**70, object()]


@pytest.mark.parametrize("has_secret", [False, True])
def test_a_name_travels_by_name(has_secret: bool) -> None:
    assert calls.route("tests.calls.add", (1, 2), None, has_secret=has_secret) == (
        False, registry.find_task("tests.calls.add"))
    # Even with arguments JSON would change: a name cannot be pickled.
    assert calls.route("noop", ((1, 2),), None, has_secret=has_secret)[0] is False


def test_an_unregistered_callable_travels_pickled_and_needs_the_secret() -> None:
    assert calls.route(plain, (1,), None, has_secret=True) == (True, None)
    assert calls.route(lambda x: x, (1,), None, has_secret=True) == (True, None)
    with pytest.raises(taskq.SignatureError, match="TASKQ_SECRET"):
        calls.route(plain, (1,), None, has_secret=False)


@pytest.mark.parametrize("value", NOT_JSON, ids=repr)
def test_a_registered_task_with_arguments_json_would_change_travels_pickled(value: Any) -> None:
    spec = calls.registered(add)
    assert calls.route(add, (value, 1), None, has_secret=True) == (True, spec)
    assert calls.route(add, (1,), {"b": value}, has_secret=True) == (True, spec)
    assert calls.route(add, ([1, {"k": value}],), None, has_secret=True) == (True, spec)
    with pytest.raises(taskq.SignatureError, match="TASKQ_SECRET"):
        calls.route(add, (value, 1), None, has_secret=False)  # never silently changed


def test_a_registered_task_with_plain_json_travels_by_name() -> None:
    spec = calls.registered(add)
    args = (1, 2.5)
    kwargs = {"b": [None, True, "s", {"k": [1, -(2**63), 2**64 - 1]}]}
    for has_secret in (False, True):
        assert calls.route(add, args, kwargs, has_secret=has_secret) == (False, spec)


def test_a_map_chunk_of_a_registered_task_travels_pickled_when_a_secret_is_at_hand() -> None:
    spec = calls.registered(add)
    items = [(1, 2), (3, 4)]
    assert calls.route(add, items, None, chunk=True, has_secret=True) == (True, spec)
    assert calls.route(add, items, None, chunk=True, has_secret=False) == (False, spec)
    # Single-argument items (star=False): a tuple item would come back a list.
    assert calls.route(plain_task, [1, 2], None, chunk=True, star=False, has_secret=False)[0] is False
    with pytest.raises(taskq.SignatureError):
        calls.route(plain_task, [(1, 2)], None, chunk=True, star=False, has_secret=False)
    with pytest.raises(taskq.SignatureError):
        calls.route(add, [(1, {2})], None, chunk=True, has_secret=False)


def test_a_time_limit_is_a_positive_number() -> None:
    assert CallOptions(time_limit=2).time_limit == 2.0
    for bad in (0, -1, math.inf, math.nan, "1", True):
        with pytest.raises(ValueError, match="time limit"):
            CallOptions(time_limit=bad)


@pytest.fixture
def offline_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[taskq.Client]:
    """A Client that builds messages; nothing is sent (fakeredis stands in)."""
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    monkeypatch.setattr("taskq.client.client.connect", lambda url, **kw: fake)
    client = taskq.Client(settings=Settings(url="redis://offline/0", secret=SECRET.encode()))
    yield client
    client.close()


def test_a_pickled_registered_task_names_itself_and_carries_its_time_limit(
        offline_client: taskq.Client) -> None:
    msg = offline_client.message(sleepy, ((1, 2),))
    assert msg.payload is not None and (msg.task, msg.timeout) == ("tests.calls.sleepy", 0.5)
    msg = offline_client.message(sleepy, ((1, 2),), options=CallOptions(time_limit=3))
    assert msg.timeout == 3.0  # the call's override wins
    msg = offline_client.message(plain, (1,), options=CallOptions(time_limit=2))
    assert msg.task.startswith("pickled:") and msg.timeout == 2.0
    msg = offline_client.message("tests.calls.sleepy", ([0.1, 2],))
    assert msg.payload is None and msg.timeout is None  # the node applies the task's own
    chunk = offline_client.message(add, [(1, 2)], chunk=True)
    assert chunk.payload is not None and chunk.chunk and chunk.task == "tests.calls.add"


def test_apply_takes_time_limit_or_its_alias_timeout(offline_client: taskq.Client) -> None:
    with pytest.raises(TypeError, match="not both"):
        offline_client.apply(plain, (1,), time_limit=1, timeout=1)
    with pytest.raises(ValueError, match="time limit"):
        offline_client.apply(plain, (1,), timeout=0)
    with pytest.raises(ValueError, match="time limit"):
        offline_client.apply("noop", time_limit=-2)


# -- against a real node ------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_url(real_redis_url: str) -> Iterator[str]:
    """One node for the module (its pool processes are warm for every test): secret set,
    this module imported, a short hard-timeout grace."""
    redis_lib.Redis.from_url(real_redis_url).flushdb()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", real_redis_url, "worker", "--procs", "2",
         "--import", "test_calls", "--import", "taskq.tasks",
         "--hard-timeout-grace", "0.5", "--log-level", "warning"],
        env=ENV, cwd="/")
    try:
        with taskq.Client(real_redis_url, secret=SECRET) as client:
            assert client.submit("noop").result(timeout=60) is None  # up and warm
        yield real_redis_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def client(node_url: str) -> Iterator[taskq.Client]:
    with taskq.Client(node_url, secret=SECRET) as c:
        yield c


def test_a_pickled_call_honours_its_time_limit(client: taskq.Client) -> None:
    started = time.monotonic()
    fut = client.apply(lambda x: time.sleep(x), (3,), timeout=0.5)
    with pytest.raises(taskq.TaskTimeoutError):
        fut.result(timeout=10)
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(taskq.TaskTimeoutError):
        client.apply(plain_sleep, (3,), time_limit=0.3).result(timeout=10)
    assert time.monotonic() - started < 2


def plain_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_registered_task_sent_pickled_keeps_its_own_time_limit(client: taskq.Client) -> None:
    started = time.monotonic()
    fut = client.submit(sleepy, (3, "a tuple: travels pickled"))
    with pytest.raises(taskq.TaskTimeoutError):
        fut.result(timeout=10)
    assert time.monotonic() - started < 2
    assert client.submit(sleepy, (0.0, "quick")).result(timeout=10) == (0.0, "quick")


def test_a_registered_task_sent_pickled_is_retried_by_its_policy(
        client: taskq.Client, tmp_path: Path) -> None:
    fut = client.submit(fails_once, str(tmp_path / "raised"), (1, 2))  # a tuple: pickled
    assert fut.result(timeout=30) == (1, 2)  # a tuple again: pickled both ways


def test_a_registered_task_sent_pickled_whose_process_died_is_retried_by_its_policy(
        client: taskq.Client, tmp_path: Path) -> None:
    # Decided in the node parent (run_lost), which knows the task from --import.
    fut = client.submit(dies_once, str(tmp_path / "died"), (3, 4))
    assert fut.result(timeout=30) == (3, 4)


def test_an_unregistered_callable_is_not_retried(client: taskq.Client, tmp_path: Path) -> None:
    fut = client.submit(unregistered_fails_once, str(tmp_path / "m"), (1, 2))
    with pytest.raises(ValueError, match="first attempt fails"):
        fut.result(timeout=30)


def unregistered_fails_once(marker: str, pair: Any) -> Any:
    if not os.path.exists(marker):
        Path(marker).write_text("attempt 1")
        raise ValueError("first attempt fails")
    return pair


def test_sys_exit_fails_only_its_item_in_json_and_pickled_chunks(node_url: str) -> None:
    with taskq.Pool(url=node_url, secret=None) as pool:  # registered + no secret: JSON chunk
        it = pool.imap(exits_on_two, [1, 2, 3], chunksize=3)
        assert next(it) == 1
        with pytest.raises(taskq.TaskError) as info:
            next(it)
        assert info.value.type_name == "SystemExit"
        assert next(it) == 3
    with taskq.Pool(url=node_url, secret=SECRET) as pool:  # a signed pickle per chunk
        for fn in (exits_on_two, exits_on_two_plain):
            it = pool.imap(fn, [1, 2, 3], chunksize=3)
            assert next(it) == 1
            with pytest.raises(SystemExit):
                next(it)
            assert next(it) == 3


def test_sys_exit_in_a_json_chunk_through_a_client(node_url: str) -> None:
    with taskq.Client(node_url) as client:  # no secret: by name
        fut = client.submit_message(client.message(exits_on_two, [(1,), (2,), (3,)], chunk=True))
        result = fut.result(timeout=30)
    assert isinstance(result, ChunkResult)
    assert result.values == [1, None, 3] and list(result.errors) == [1]
    with pytest.raises(taskq.TaskError, match="SystemExit"):
        result.raise_first()


def _spy(client: taskq.Client, monkeypatch: pytest.MonkeyPatch, sent: list[Future[Any]]) -> None:
    """Keep every Future the client hands out for a sent message."""
    real = client.submit_message
    real_many = client._submit_encoded

    def submit_message(msg: Any) -> Future[Any]:
        fut = real(msg)
        sent.append(fut)
        return fut

    def submit_encoded(ids: Any, encoded: Any, batch: Any = None) -> list[Future[Any]]:
        futs = real_many(ids, encoded, batch)
        sent.extend(futs)
        return futs

    monkeypatch.setattr(client, "submit_message", submit_message)
    monkeypatch.setattr(client, "_submit_encoded", submit_encoded)


@pytest.mark.parametrize("secret", [None, SECRET], ids=["json", "pickled"])
def test_every_producer_api_gets_a_chunk_result(
        node_url: str, secret: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Future[Any]] = []
    with taskq.Executor(node_url, secret=secret) as ex:
        _spy(ex.client, monkeypatch, sent)
        assert list(ex.map(plain_task, [1, 2, 3], chunksize=2)) == [1, 2, 3]
    with taskq.Pool(url=node_url, secret=secret) as pool:
        _spy(pool.client, monkeypatch, sent)
        assert pool.map(plain_task, [1, 2, 3], chunksize=2) == [1, 2, 3]
        assert list(pool.imap(plain_task, [4, 5], chunksize=2)) == [4, 5]
    with taskq.Client(node_url, secret=secret) as client:
        _spy(client, monkeypatch, sent)
        assert list(client.map(add, [1, 2], [3, 4], chunksize=2)) == [4, 6]
        assert list(client.imap(plain_task, [6, 7], chunksize=2)) == [6, 7]
    assert len(sent) == 2 + 2 + 1 + 1 + 1
    assert all(type(f.result(timeout=0)) is ChunkResult for f in sent)


def test_executor_and_pool_honour_taskq_queue(
        node_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_QUEUE", "from-env")
    r = redis_lib.Redis.from_url(node_url)
    stream = Broker(r, "from-env").keys.stream
    ex = taskq.Executor(node_url, secret=SECRET)
    try:
        assert ex.client.queue == "from-env"
        ex.submit(plain, 1)
        assert ex.client.flush(timeout=10) and r.xlen(stream) == 1
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    pool = taskq.Pool(url=node_url, secret=SECRET)
    try:
        assert pool.client.queue == "from-env"
        pool.apply_async(plain, (1,))
        # 1: the Executor's shutdown(cancel_futures=True) really removed its queued task.
        assert pool.client.flush(timeout=10) and r.xlen(stream) == 1
        assert r.hget(Broker(r, "from-env").keys.stats, "enqueued") == b"2"
    finally:
        pool.terminate()
    r.close()
