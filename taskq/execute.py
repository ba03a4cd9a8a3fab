"""What runs inside a pool process: decode an entry, run its task, encode the outcome.

The node parent hands each pool process raw entry bytes and gets back a ready report,
so decoding, user code and result encoding all happen in the children, in parallel,
and the parent's per-task work stays a few dictionary operations.
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from taskq import pool, registry
from taskq.errors import (
    MessageError,
    SignatureError,
    TaskError,
    TaskqError,
    UnknownTaskError,
    task_error,
)
from taskq.message import (
    ErrorTriple,
    Routing,
    TaskMessage,
    decode,
    encode_error,
    encode_ok,
    routing_of,
)

# (kind, routing, outcome JSON, x1, x2): the fields of a broker.Report minus the entry id.
RunResult = tuple[str, Routing | None, bytes, bytes, bytes]
EntryPayload = tuple[bytes, bytes | None, int]  # body, signature, attempt

_secret: bytes | None = None
PickledRunner = Callable[[TaskMessage], tuple[bool, Any]]
_pickled_runner: PickledRunner | None = None
"""Runs signed pickled payloads; installed by taskq.executor (kept out of this module so
the JSON path never imports pickle machinery)."""


def init_child(
    imports: Sequence[str], init: str | None, init_args: Sequence[Any], secret: bytes | None
) -> None:
    """Pool initializer: import the task modules, then the operator's ``--init``."""
    global _secret
    signal.set_wakeup_fd(-1)  # the parent's wake-up pipe is not ours to write
    _secret = secret
    registry.import_task_modules(imports)
    registry.task_names()  # loads the built-ins once, before the first task
    if init:
        registry.resolve_callable(init)(*init_args)


def install_pickled_runner(runner: PickledRunner) -> None:
    global _pickled_runner
    _pickled_runner = runner


def error_triple(exc: BaseException) -> ErrorTriple:
    if isinstance(exc, TaskError):
        return (exc.type_name, exc.message, exc.remote_traceback or traceback.format_exc())
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return (name, str(exc), "".join(traceback.format_exception(exc)))


def _routing(msg: TaskMessage) -> Routing:
    return Routing(msg.id, msg.reply_to, msg.batch, msg.keep_result)


def _dead(body: bytes, signature: bytes | None, attempt: int, reason: str, kind: str) -> RunResult:
    routing = routing_of(body)
    task_id = routing.task_id if routing else "?"
    outcome = encode_error(task_id, (kind, f"dead-lettered: {reason}", ""))
    packed = b"%d|%s|%s" % (attempt, signature or b"", body)
    return ("dead", routing, outcome, packed, reason.encode())


def run_entry(payload: EntryPayload) -> RunResult:
    """The pool's runner: one stream entry in, one report out. Never raises."""
    body, signature, attempt = payload
    try:
        msg = decode(body, signature, _secret)
    except SignatureError as exc:
        return _dead(body, signature, attempt, f"untrusted payload: {exc}", "SignatureError")
    except MessageError as exc:
        return _dead(body, signature, attempt, f"malformed message: {exc}", "MessageError")
    if msg.payload is not None:
        return _run_pickled(msg)
    try:
        spec = registry.get_task(msg.task)
    except UnknownTaskError as exc:
        return _dead(body, signature, attempt, str(exc), "UnknownTaskError")
    timeout = msg.timeout if msg.timeout is not None else spec.timeout
    if msg.chunk:
        return _run_chunk(msg, spec, timeout)
    try:
        pool.arm_timeout(timeout)
        value = spec.fn(*msg.args, **msg.kwargs)
        pool.arm_timeout(None)
    except (Exception, SystemExit) as exc:  # a task calling sys.exit() fails, not the process
        pool.arm_timeout(None)
        return _retry_or_fail(msg, spec, payload, exc, error_triple(exc))
    return _encode_value(msg, value)


def _retry_or_fail(msg: TaskMessage, spec: registry.TaskSpec, payload: EntryPayload,
                   exc: BaseException, error: ErrorTriple) -> RunResult:
    body, signature, attempt = payload
    if attempt <= spec.retries and isinstance(exc, spec.retry_on):
        due_ms = int((time.time() + spec.retry_delay(attempt, random.random())) * 1000)
        packed = b"%d|%s|%s" % (attempt + 1, signature or b"", body)
        return ("retry", _routing(msg), b"", packed, str(due_ms).encode())
    return ("fail", _routing(msg), encode_error(msg.id, error), b"", b"")


def run_lost(payload: EntryPayload, error: ErrorTriple, secret: bytes | None) -> RunResult:
    """The report for a task whose process died under it (WorkerLostError) or was killed
    at its hard time limit (TaskTimeoutError), decided in the node parent.

    The task's own retry policy applies, as to any error it raised: with ``retries`` and a
    matching ``retry_on`` it is retried with backoff, else it fails. The parent only reads
    the envelope and the registry (it runs no user code); anything it cannot decode, and
    signed pickled payloads, fail.
    """
    body = payload[0]
    try:
        msg = decode(body, payload[1], secret)
        spec = registry.find_task(msg.task) if msg.payload is None else None
    except TaskqError:
        msg, spec = None, None
    if msg is None or spec is None or msg.chunk:
        routing = routing_of(body)
        return ("fail", routing, encode_error(routing.task_id if routing else "?", error), b"", b"")
    return _retry_or_fail(msg, spec, payload, task_error(*error), error)


def _encode_value(msg: TaskMessage, value: Any) -> RunResult:
    try:
        return ("ok", _routing(msg), encode_ok(msg.id, value), b"", b"")
    except TypeError as exc:
        error = ("TypeError", f"result of {msg.task or 'task'} is not JSON-serializable: {exc}", "")
        return ("fail", _routing(msg), encode_error(msg.id, error), b"", b"")


def _run_chunk(msg: TaskMessage, spec: registry.TaskSpec, timeout: float | None) -> RunResult:
    """Many calls in one message: each item succeeds or fails on its own."""
    items: list[Any] = []
    for args in msg.args:
        try:
            pool.arm_timeout(timeout)
            items.append([1, spec.fn(*args, **msg.kwargs)])
        except Exception as exc:
            items.append([0, list(error_triple(exc))])
        finally:
            pool.arm_timeout(None)
    return _encode_value(msg, items)


def _run_pickled(msg: TaskMessage) -> RunResult:
    global _pickled_runner
    if _pickled_runner is None and _secret is not None:
        # Only reached once a payload's signature has verified: load the pickle machinery.
        from taskq import pickled

        _pickled_runner = lambda m: pickled.run(m.id, m.payload or b"", _secret)  # noqa: E731
    if _pickled_runner is None:
        error = ("SignatureError", "this worker does not run pickled payloads", "")
        return ("fail", _routing(msg), encode_error(msg.id, error), b"", b"")
    try:
        ok, blob = _pickled_runner(msg)
    except Exception as exc:
        return ("fail", _routing(msg), encode_error(msg.id, error_triple(exc)), b"", b"")
    return ("ok" if ok else "fail", _routing(msg), blob, b"", b"")
