"""Trace context: the producer's active OpenTelemetry span travels in the signed envelope
(``tp``/``ts``), the task sees it (``taskq.current_task()``), the child runs each task in a
consumer span under it and flushes its spans before a recycled process exits; without
OpenTelemetry nothing is imported and the submit path costs one dictionary look-up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from test_aio import SECRET, start_worker, stop

import taskq
from taskq.client import encode, tracing
from taskq.config import Settings
from taskq.errors import SignatureError
from taskq.message import TaskMessage, decode

TRACER = TracerProvider().get_tracer("producer")  # a local provider: no global state set
SETTINGS = Settings(secret=SECRET.encode())


def ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def test_the_active_span_is_signed_into_the_envelope() -> None:
    msg = TaskMessage(id="t1", task="aio.square", args=[3])
    body, _ = encode.envelope(msg, SETTINGS, "default", 60.0)
    assert b'"tp"' not in body  # no active span: nothing added

    # A producer span under a remote parent that carried a tracestate.
    remote = TraceContextTextMapPropagator().extract({
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=opaque"})
    with TRACER.start_as_current_span("produce", context=remote) as span:
        body, signature = encode.envelope(msg, SETTINGS, "default", 60.0)
    trace_id, span_id = ids(span)
    got = decode(body, signature, SETTINGS.secret, "default")
    assert got.signed
    assert (got.traceparent, got.tracestate) == (f"00-{trace_id}-{span_id}-01", "vendor=opaque")
    # Inside the signed body: a trace context grafted on afterwards does not verify.
    forged = body.replace(span_id.encode(), b"0" * 15 + b"1")
    with pytest.raises(SignatureError):
        decode(forged, signature, SETTINGS.secret, "default")
    # A message that already carries a trace context keeps it.
    with TRACER.start_as_current_span("other"):
        assert tracing.stamp(got) is got


def test_a_bad_trace_context_is_dropped_not_refused() -> None:
    body = b'{"id":"t2","t":"aio.square","a":[1],"tp":5,"ts":["x"]}'
    msg = decode(body, None, None)
    assert (msg.task, msg.traceparent, msg.tracestate) == ("aio.square", None, None)


def test_without_opentelemetry_nothing_is_imported_and_submit_costs_a_lookup() -> None:
    """In a fresh interpreter without OpenTelemetry (redis-py imports it when it is
    installed): encoding works, and the trace step costs well under a microsecond."""
    code = textwrap.dedent("""
        import importlib.abc, sys, time

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):  # as if it were not installed
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "opentelemetry":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        import taskq
        from taskq.client import encode, tracing
        from taskq.config import Settings
        from taskq.message import TaskMessage
        import taskq.node.context
        msg = TaskMessage(id="t", task="aio.square", args=[1])
        body, _ = encode.envelope(msg, Settings(), "default", 60.0)
        assert b'"tp"' not in body
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            tracing.stamp(msg)
        print((time.perf_counter() - t0) / n * 1e9)
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    ns, modules = done.stdout.splitlines()
    assert modules == "[]"
    assert float(ns) < 1000, f"{ns} ns per stamp"


def _spans(path: Path, n: int, timeout: float) -> list[dict[str, Any]]:
    """The spans the worker's children exported to ``path``, once there are ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)  # the file is written by other processes: nothing to wait on


@pytest.mark.timeout(90)
def test_tasks_continue_the_trace_in_spans_that_survive_recycling(
    redis_url: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    # Every process is recycled after one task; its batch processor would hold spans
    # for a minute, so they reach the file only through taskq's flush at exit.
    worker = start_worker(redis_url, "--max-tasks-per-child", "1", "--init",
                          "aio_tasks:setup_tracing", "--init-args", json.dumps([str(spans_file)]))
    try:
        async def produce() -> tuple[tuple[str, str], list[dict[str, Any]], dict[str, Any]]:
            async with taskq.AsyncClient(redis_url) as client:
                with TRACER.start_as_current_span("produce") as span:
                    futures = [await client.submit("aio.whoami") for _ in range(3)]
                plain = await (await client.submit("aio.whoami"))  # no span active
                return ids(span), list(await asyncio.gather(*futures)), plain

        async def bounded() -> Any:
            return await asyncio.wait_for(produce(), 60)

        (trace_id, producer_span), traced, plain = asyncio.run(bounded())
        with taskq.Client(redis_url) as client, TRACER.start_as_current_span("sync") as span:
            traced.append(client.submit("aio.whoami").result(timeout=60))
        sync_trace, sync_span = ids(span)

        parents = [producer_span] * 3 + [sync_span]
        traces = [trace_id] * 3 + [sync_trace]
        for seen, parent, trace_of in zip(traced, parents, traces, strict=True):
            assert seen["traceparent"].startswith(f"00-{trace_of}-{parent}-")  # then flags
            assert (seen["name"], seen["attempt"]) == ("aio.whoami", 1)
            assert seen["span"]["trace_id"] == trace_of  # the task runs inside the trace
        assert plain["traceparent"] is None and plain["span"]  # a root span of its own

        spans = _spans(spans_file, 5, timeout=30)
        assert worker.poll() is None  # flushed by recycling, not by the node's shutdown
        by_id = {s["span_id"]: s for s in spans}
        for seen, parent, trace_of in zip(traced, parents, traces, strict=True):
            span_seen = by_id[seen["span"]["span_id"]]
            assert (span_seen["trace_id"], span_seen["parent_id"]) == (trace_of, parent)
            assert (span_seen["name"], span_seen["kind"]) == ("taskq.run aio.whoami", "CONSUMER")
            assert span_seen["attributes"]["messaging.message.id"] == seen["id"]
            assert span_seen["attributes"]["taskq.outcome"] == "ok"
        assert by_id[plain["span"]["span_id"]]["parent_id"] is None
        assert len({s["pid"] for s in spans}) == 5  # one process per task: each recycled
    finally:
        stop(worker)


def test_current_task_is_none_outside_a_task() -> None:
    assert taskq.current_task() is None
