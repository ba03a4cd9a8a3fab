"""Tasks (and a tracing initializer) that worker subprocesses import in test_aio and
test_tracing."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import taskq


@taskq.task(name="aio.square")
def square(x: int) -> int:
    return x * x


@taskq.task(name="aio.divide")
def divide(a: float, b: float) -> float:
    return a / b


@taskq.task(name="aio.whoami")
def whoami() -> dict[str, Any]:
    """What the task knows about itself, and the span it runs in (if any)."""
    me = taskq.current_task()
    assert me is not None
    span: dict[str, Any] = {}
    try:
        from opentelemetry import trace
    except ImportError:
        pass
    else:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            span = {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
    return {"id": me.id, "name": me.name, "attempt": me.attempt, "traceparent": me.traceparent,
            "tracestate": me.tracestate, "span": span, "pid": os.getpid()}


def setup_tracing(path: str) -> None:
    """``--init``: an SDK tracer provider whose batch processor would hold spans for a
    minute, exporting to JSON lines in ``path``: a span reaches the file before then
    only if taskq flushes it (as it must when a process is recycled)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = []
            for s in spans:
                assert s.context is not None
                lines.append(json.dumps({
                    "name": s.name, "kind": s.kind.name, "pid": os.getpid(),
                    "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                    "attributes": dict(s.attributes or {}),
                    "status": s.status.status_code.name}) + "\n")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, "".join(lines).encode())  # one write: children append at once
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(FileExporter(), schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
