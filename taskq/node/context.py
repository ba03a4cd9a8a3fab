"""The running task inside a pool process: :func:`current_task` for task code and, with
OpenTelemetry (the ``taskq[otel]`` extra), one consumer span per task.

The runner calls :func:`begin` before a task and :func:`end` after it. Without
OpenTelemetry that is two assignments per task; nothing is imported.

Spans: if, once the task modules and the node's ``--init`` have run, this process has a
real tracer provider (an SDK one that the task modules or ``--init`` set), every task
runs in a CONSUMER span ``taskq.run <task>`` whose parent is the producer's span (the
envelope's ``tp``/``ts``), and is the current span while the task runs, so the task's own
spans join the producer's trace. The provider is flushed when the process exits (recycled
after ``max_tasks_per_child`` or over its memory limit, or at shutdown): the spans of its
last tasks are exported, not lost with the process (Celery's known bug at
``max_tasks_per_child``). A process killed by a signal cannot flush.
"""

from __future__ import annotations

import multiprocessing.util
import sys
from dataclasses import dataclass
from typing import Any

from taskq.message import Report, TaskMessage


@dataclass(frozen=True, slots=True)
class CurrentTask:
    """What a running task knows about itself (:func:`taskq.current_task`)."""

    id: str
    name: str
    """Its registered name, or the label of a pickled callable."""
    attempt: int
    """1 for the first run, 2 for the first retry, …"""
    traceparent: str | None
    """The W3C traceparent of the producer's span, if it had one (to continue its trace)."""
    tracestate: str | None


_msg: TaskMessage | None = None
_attempt = 1
_otel: _Tracing | None = None


def current_task() -> CurrentTask | None:
    """The task running in this process, or None outside a task (in a producer, say)."""
    msg = _msg
    if msg is None:
        return None
    return CurrentTask(msg.id, msg.task, _attempt, msg.traceparent, msg.tracestate)


def begin(msg: TaskMessage, attempt: int) -> None:
    """``msg`` starts running (its ``attempt``-th run)."""
    global _msg, _attempt
    _msg, _attempt = msg, attempt
    if _otel is not None:
        _otel.start(msg, attempt)


def end(report: Report | None) -> None:
    """The running task finished with ``report`` (None: it raised past the runner)."""
    global _msg
    _msg = None
    if _otel is not None:
        _otel.stop(report)


def setup_tracing() -> bool:
    """Trace tasks if this process has a real tracer provider (called once the task
    modules and ``--init`` ran). True if it does. Registers the flush at exit."""
    global _otel
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False  # nothing here imported OpenTelemetry: nothing set a provider
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return False
    _otel = _Tracing(provider)
    # A pool process ends through multiprocessing's exit path, which runs its finalizers
    # but not atexit handlers (where the SDK would flush): flush there.
    multiprocessing.util.Finalize(None, flush_spans, exitpriority=100)
    return True


def flush_spans(timeout: float = 5.0) -> None:
    """Export the spans still buffered in this process's span processors."""
    if _otel is not None:
        _otel.flush(timeout)


class _Tracing:
    """The OpenTelemetry side, made only when a real provider is set."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        from opentelemetry.trace.status import Status, StatusCode

        self.provider, self.context, self.trace = provider, context, trace
        self.tracer = provider.get_tracer("taskq")
        self.propagator = TraceContextTextMapPropagator()
        self.error = Status(StatusCode.ERROR)
        self.span: Any = None
        self.token: Any = None

    def start(self, msg: TaskMessage, attempt: int) -> None:
        carrier = {}
        if msg.traceparent:
            carrier["traceparent"] = msg.traceparent
            if msg.tracestate:
                carrier["tracestate"] = msg.tracestate
        # An empty carrier gives an empty context: a root span, never a leftover parent.
        parent = self.propagator.extract(carrier, context=self.context.Context())
        self.span = self.tracer.start_span(
            f"taskq.run {msg.task}", context=parent, kind=self.trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "taskq", "messaging.operation.type": "process",
                        "messaging.message.id": msg.id, "taskq.task": msg.task,
                        "taskq.attempt": attempt})
        self.token = self.context.attach(self.trace.set_span_in_context(self.span))

    def stop(self, report: Report | None) -> None:
        span, token = self.span, self.token
        if span is None:
            return
        self.span = self.token = None
        kind = report.kind if report is not None else "fail"
        span.set_attribute("taskq.outcome", kind)
        if kind != "ok":
            span.set_status(self.error)
        self.context.detach(token)
        span.end()

    def flush(self, timeout: float) -> None:
        force_flush = getattr(self.provider, "force_flush", None)
        if force_flush is not None:
            force_flush(int(timeout * 1000))
