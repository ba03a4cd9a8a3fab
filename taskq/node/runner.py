"""The task runner, inside a pool process: decode an entry, run its task, encode the outcome.

The node parent hands each pool process raw entry bytes and gets back a ready
:class:`~taskq.message.Report`, so decoding, user code and result encoding all happen in
the children, in parallel, and the parent's per-task work stays a few dictionary
operations. The parent itself only calls :func:`run_lost`, for a task whose process died.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from typing import Any

from taskq import registry
from taskq.errors import MessageError, SignatureError, TaskqError, UnknownTaskError, task_error
from taskq.message import (
    Entry,
    ErrorTriple,
    Report,
    Routing,
    TaskMessage,
    dead_letter,
    decode,
    describe_exception,
    encode_error,
    encode_ok,
    routing_of,
)
from taskq.node.child import arm_timeout

_secret: bytes | None = None


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


def _routing(msg: TaskMessage) -> Routing:
    return Routing(msg.id, msg.reply_to, msg.batch, msg.keep_result)


def run_entry(entry: Entry) -> Report:
    """The pool's runner: one stream entry in, one report out. Never raises."""
    try:
        msg = decode(entry.body, entry.signature, _secret)
    except SignatureError as exc:
        return dead_letter(entry, f"untrusted payload: {exc}")
    except MessageError as exc:
        return dead_letter(entry, f"malformed message: {exc}")
    if msg.payload is not None:
        return _run_pickled(msg)
    try:
        spec = registry.get_task(msg.task)
    except UnknownTaskError as exc:
        return dead_letter(entry, str(exc))
    timeout = msg.timeout if msg.timeout is not None else spec.timeout
    try:
        if msg.chunk:
            return _run_chunk(msg, spec, timeout)
        try:
            arm_timeout(timeout)
            value = spec.fn(*msg.args, **msg.kwargs)
        finally:
            arm_timeout(None)
    except (Exception, SystemExit) as exc:  # a task calling sys.exit() fails, not the process
        return _retry_or_fail(msg, spec, entry, exc, describe_exception(exc))
    finally:
        registry.run_after_task_hooks()
    return _encode_value(msg, value)


def _retry_or_fail(msg: TaskMessage, spec: registry.TaskSpec, entry: Entry,
                   exc: BaseException, error: ErrorTriple) -> Report:
    if entry.attempt <= spec.retries and isinstance(exc, spec.retry_on):
        due_ms = int((time.time() + spec.retry_delay(entry.attempt, random.random())) * 1000)
        return Report("retry", _routing(msg), b"", entry.packed(entry.attempt + 1),
                      str(due_ms).encode())
    return Report("fail", _routing(msg), encode_error(msg.id, error))


def run_lost(entry: Entry, error: ErrorTriple, secret: bytes | None) -> Report:
    """The report for a task whose process died under it (WorkerLostError) or was killed
    at its hard time limit (TaskTimeoutError), decided in the node parent.

    The task's own retry policy applies, as to any error it raised: with ``retries`` and a
    matching ``retry_on`` it is retried with backoff, else it fails. The parent only reads
    the envelope and the registry (it runs no user code); anything it cannot decode, and
    signed pickled payloads, fail.
    """
    try:
        msg = decode(entry.body, entry.signature, secret)
        spec = registry.find_task(msg.task) if msg.payload is None else None
    except TaskqError:
        msg, spec = None, None
    if msg is None or spec is None or msg.chunk:
        routing = routing_of(entry.body)
        return Report("fail", routing, encode_error(routing.task_id if routing else "?", error))
    return _retry_or_fail(msg, spec, entry, task_error(*error), error)


def _encode_value(msg: TaskMessage, value: Any) -> Report:
    try:
        return Report("ok", _routing(msg), encode_ok(msg.id, value))
    except TypeError as exc:
        error = ("TypeError", f"result of {msg.task or 'task'} is not JSON-serializable: {exc}", "")
        return Report("fail", _routing(msg), encode_error(msg.id, error))


def _run_chunk(msg: TaskMessage, spec: registry.TaskSpec, timeout: float | None) -> Report:
    """Many calls in one message: each item succeeds or fails on its own."""
    items: list[Any] = []
    for args in msg.args:
        try:
            arm_timeout(timeout)
            items.append([1, spec.fn(*args, **msg.kwargs)])
        except Exception as exc:
            items.append([0, list(describe_exception(exc))])
        finally:
            arm_timeout(None)
    return _encode_value(msg, items)


def _run_pickled(msg: TaskMessage) -> Report:
    if _secret is None:
        error = ("SignatureError", "this worker does not run pickled payloads", "")
        return Report("fail", _routing(msg), encode_error(msg.id, error))
    # Only reached once a payload's signature has verified: load the pickle machinery.
    from taskq.node import signed_runner

    try:
        ok, blob = signed_runner.run(msg.id, msg.payload or b"", _secret)
    except Exception as exc:
        return Report("fail", _routing(msg), encode_error(msg.id, describe_exception(exc)))
    return Report("ok" if ok else "fail", _routing(msg), blob)
