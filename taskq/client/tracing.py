"""Trace context on the producer: the W3C ``traceparent``/``tracestate`` of the active
OpenTelemetry span, stamped into a task's envelope (``tp``/``ts``, inside the signed
body: a forger cannot graft a task onto someone else's trace).

OpenTelemetry is optional and never imported here. A program that has not imported
``opentelemetry.trace`` cannot have an active span, so the hot path is one dictionary
look-up in ``sys.modules``; only a program that uses OpenTelemetry pays for reading
its context (and only a span that is valid is written).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from taskq.message import TaskMessage

_propagator: Any = None  # the W3C TraceContext propagator, made on first use


def trace_context() -> tuple[str, str | None] | None:
    """``(traceparent, tracestate or None)`` of the span active in this context (thread
    or asyncio task), or None: no OpenTelemetry loaded, or no valid span."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    if span is trace.INVALID_SPAN or not span.get_span_context().is_valid:
        return None  # (no span at all is the common case: an identity test)
    global _propagator
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    parent = carrier.get("traceparent")
    return None if parent is None else (parent, carrier.get("tracestate") or None)


def stamp(msg: TaskMessage) -> TaskMessage:
    """``msg`` carrying the active trace context, if there is one (else ``msg`` itself).
    A message that already carries one (re-sent, or set by the caller) keeps it."""
    if msg.traceparent is not None:
        return msg
    context = trace_context()
    if context is None:
        return msg
    return dataclasses.replace(msg, traceparent=context[0], tracestate=context[1])
