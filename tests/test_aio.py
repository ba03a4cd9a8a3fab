"""taskq.AsyncClient against a real Redis and a real `taskq worker` subprocess: futures,
errors, map, send, signing/pickles, group commit of many concurrent submits, Client's
futures under asyncio.wrap_future, and the Starlette example."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import QueueKeys
from taskq.client.aio import AsyncClient
from taskq.message import decode

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
SECRET = "aio test secret " * 3


def start_worker(url: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "2",
         "--import", "aio_tasks", "--import", "taskq.tasks", *extra],
        env={**ENV, **(env or {})}, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def worker(redis_url: str) -> Iterator[subprocess.Popen[str]]:
    proc = start_worker(redis_url, env={"TASKQ_SECRET": SECRET})
    yield proc
    stop(proc)


def run(coro: Any, timeout: float = 40.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def test_submit_map_errors_and_a_thousand_concurrent_submits(
    redis_url: str, worker: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines = 0
    xadd = AsyncClient._xadd

    async def counting(self: AsyncClient, envelopes: Any) -> None:
        nonlocal pipelines
        pipelines += 1
        await xadd(self, envelopes)

    monkeypatch.setattr(AsyncClient, "_xadd", counting)

    async def main() -> None:
        async with taskq.AsyncClient(redis_url) as client:
            fut = await client.submit("aio.square", 7)
            assert isinstance(fut, asyncio.Future)
            assert await fut == 49
            with pytest.raises(taskq.TaskError, match="division by zero"):
                await (await client.apply("aio.divide", (1, 0)))
            assert [v async for v in client.map("aio.square", range(10), chunksize=3)] == \
                [x * x for x in range(10)]
            assert [v async for v in client.map("aio.square", [])] == []
            with pytest.raises(TypeError, match="not JSON-serializable"):  # alone, at the call
                await client.submit("aio.square", {1, 2})

            before = pipelines
            futures = await asyncio.gather(*(client.submit("aio.square", i) for i in range(1000)))
            assert len({id(f) for f in futures}) == 1000
            assert await asyncio.gather(*futures) == [i * i for i in range(1000)]
            # Group commit: the thousand went in a few pipelines, not a round trip each.
            assert pipelines - before <= 20, pipelines - before
            assert not client._futures  # every reply resolved and forgotten

    run(main(), timeout=50)


def test_signed_pickles_send_and_the_same_envelope_as_client(
    redis_url: str, worker: subprocess.Popen[str]
) -> None:
    offset = 5

    async def main() -> str:
        async with taskq.AsyncClient(redis_url, secret=SECRET) as client:
            # An unregistered closure travels pickled, signed: it needs the node's secret.
            assert await (await client.submit(lambda x: x + offset, 1)) == 6
            assert [v async for v in client.map(lambda x: -x, [1, 2, 3])] == [-1, -2, -3]
            with pytest.raises(ZeroDivisionError):  # a pickled task's own exception type
                await (await client.submit(lambda: 1 / 0))
            task_id = await client.send("aio.square", 3)
            return task_id

    assert run(main()).startswith(tuple("0123456789abcdef"))
    stats = redis_lib.Redis.from_url(redis_url).hgetall(QueueKeys("default").stats)
    assert int(stats[b"enqueued"]) == 6  # 1 + a chunk per item of map + 1 + the send


def test_envelopes_are_built_by_the_one_encoder(redis_url: str) -> None:
    """No node: the entries AsyncClient and Client write for the same call are alike
    (same fields, both signed for the queue), made by client/encode.py."""
    async def main() -> None:
        async with taskq.AsyncClient(redis_url, secret=SECRET) as aclient:
            await aclient.send("aio.square", 4)
            await aclient.apply("aio.square", (4,), time_limit=3)
    run(main())
    with taskq.Client(redis_url, secret=SECRET) as client:
        client.send("aio.square", 4)
        client.apply("aio.square", (4,), time_limit=3)
        assert client.flush(10)
    conn = redis_lib.Redis.from_url(redis_url)
    entries = conn.xrange(QueueKeys("default").stream)
    assert len(entries) == 4
    shapes = []
    for _, fields in entries:
        msg = decode(fields[b"m"], fields[b"s"], SECRET.encode(), "default")
        assert msg.signed and msg.expires is not None
        shapes.append((msg.task, msg.args, msg.reply_to is not None, msg.keep_result, msg.timeout))
    assert shapes[:2] == shapes[2:] == [("aio.square", [4], False, False, None),
                                        ("aio.square", [4], True, True, 3.0)]


def test_client_futures_work_under_asyncio_wrap_future(
    redis_url: str, worker: subprocess.Popen[str]
) -> None:
    async def main(client: taskq.Client) -> list[int]:
        futures = [asyncio.wrap_future(client.submit("aio.square", i)) for i in range(5)]
        return list(await asyncio.gather(*futures))

    with taskq.Client(redis_url) as client:
        assert run(main(client)) == [0, 1, 4, 9, 16]


def test_unreachable_redis_and_bad_url_fail_at_the_call() -> None:
    async def main() -> None:
        async with taskq.AsyncClient("redis://127.0.0.1:1/15") as client:
            with pytest.raises(taskq.BrokerError, match="cannot reach Redis"):
                await client.submit("aio.square", 1)
    run(main(), timeout=20)
    with pytest.raises(taskq.ConfigError):
        taskq.AsyncClient("nosuch://x")


def test_starlette_example_serves_results_from_a_node(
    redis_url: str, worker: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    monkeypatch.setenv("TASKQ_URL", redis_url)
    path = TESTS.parent / "examples" / "starlette_app.py"
    spec = importlib.util.spec_from_file_location("starlette_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.app) as http:
        done = http.get("/primes", params={"start": 0, "end": 40000})
        assert done.status_code == 200, done.text
        assert done.json() == {"start": 0, "end": 40000, "primes": 4203}
        assert http.get("/primes", params={"start": "x"}).status_code == 400
        assert http.get("/sleep/0.1").json() == {"slept": 0.1}


def test_replies_are_accepted_by_the_one_rule_of_the_thread_listener(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No node: lines pushed into the inbox by hand. A progress line is never an outcome
    (dropped, not logged as malformed), a pickled reply to a client that sent nothing
    pickled and a reply naming no task are skipped and logged, the genuine one resolves."""
    async def main() -> tuple[Any, str]:
        async with taskq.AsyncClient(redis_url) as client:
            fut = await client.submit("aio.square", 7)
            (task_id,) = client._futures  # the one task waited for
            lines = [b'{"progress":{"id":"%s","done":1,"total":2,"at":1.0}}' % task_id.encode(),
                     b'{"id":"%s","ok":true,"x":"AAAA"}' % task_id.encode(),
                     b'{"ok":true,"v":1}',
                     b'{"id":"%s","ok":true,"v":49}' % task_id.encode()]
            conn = redis_lib.Redis.from_url(redis_url)
            conn.rpush(QueueKeys("default").inbox(client.client_id), *lines)
            conn.close()
            return await fut, task_id

    with caplog.at_level("WARNING", logger="taskq.client"):
        value, task_id = run(main())
    assert value == 49
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # nothing about the progress line
    assert f"pickled reply for task {task_id}" in warnings[0]
    assert "no task id" in warnings[1]
