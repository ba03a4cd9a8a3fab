"""The task runner, inside a pool process: decode an entry, run its task, encode the outcome.

The node parent hands each pool process raw entry bytes and gets back a ready
:class:`~taskq.message.Report`, so decoding, user code and result encoding all happen in
the children, in parallel, and the parent's per-task work stays a few dictionary
operations. The parent itself only calls :func:`run_lost`, for a task whose process died.

One rule for every task however it travelled (by name, or as a signed pickle whose
envelope names its registered task, if it is one): the time limit is the envelope's
``to``, else the registered task's; the retry policy is the registered task's (none for
an unregistered callable); in a chunk each item succeeds or fails on its own (an
Exception or SystemExit fails just that item, the time limit applies per item).

Trust: an entry's signature is checked for the queue it was read from; an unsigned one
is dead-lettered when the node requires signatures, an expired one ("expired"). The
outcome of a signed entry is signed for its task id (its producer takes no other), so
an honest node never delivers a reply for a task id that a forger put in an unsigned
envelope to a producer that signs.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from typing import Any

import orjson

from taskq import registry
from taskq.errors import (
    ExpiredError,
    MessageError,
    SignatureError,
    TaskqError,
    UnknownTaskError,
    task_error,
)
from taskq.message import Entry, Report, Routing, TaskMessage, dead_letter, decode, routing_of
from taskq.node import context
from taskq.node.child import arm_timeout
from taskq.outcome import ErrorTriple, describe_exception, encode_chunk, encode_error, encode_ok
from taskq.signing import sign_outcome

_secret: bytes | None = None
_require_signed = False


def init_child(
    imports: Sequence[str], init: str | None, init_args: Sequence[Any], secret: bytes | None,
    require_signed: bool = False,
) -> None:
    """Pool initializer: import the task modules, then the operator's ``--init``. The
    built-in demo tasks run only on a node given no ``--import`` (or ``taskq.tasks``):
    a production node runs only what its operator imported."""
    global _secret, _require_signed
    signal.set_wakeup_fd(-1)  # the parent's wake-up pipe is not ours to write
    _secret, _require_signed = secret, require_signed
    registry.use_builtins(registry.builtins_wanted(imports))
    registry.import_task_modules(imports)
    registry.task_names()  # loads the built-ins once, before the first task
    if init:
        registry.resolve_callable(init)(*init_args)
    context.setup_tracing()  # after --init: it is where a tracer provider gets set


def _routing(msg: TaskMessage) -> Routing:
    return Routing(msg.id, msg.reply_to, msg.batch, msg.keep_result)


def run_entry(entry: Entry) -> Report:
    """The pool's runner: one stream entry in, one report out (naming its task, for the
    node's metrics). Never raises."""
    try:
        msg = decode(entry.body, entry.signature, _secret, entry.queue, _require_signed)
    except ExpiredError as exc:  # its signature verified: its producer may be told so
        return dead_letter(entry, f"expired: {exc}", _secret)
    except SignatureError as exc:  # never signed: a forger must get no signed reply
        return dead_letter(entry, f"untrusted payload: {exc}")
    except MessageError as exc:
        return dead_letter(entry, f"malformed message: {exc}")
    context.begin(msg, entry.attempt)  # taskq.current_task(), and its span if tracing
    try:
        report = _run_msg(msg, entry)._replace(task=task_label(msg))
    except BaseException:
        context.end(None)
        raise
    context.end(report)
    return _signed(entry, report, _secret) if msg.signed else report


def _signed(entry: Entry, report: Report, secret: bytes | None) -> Report:
    """The report with its outcome signed for its task id (a pickled result carries its
    own signature, a retry has no outcome)."""
    if secret is None or not report.outcome or report.routing is None:
        return report
    task_id = report.routing.task_id
    head = b'{"id":%s,"ok":' % orjson.dumps(task_id)
    if report.outcome.startswith((head + b'true,"x":', head + b'false,"x":')):
        return report  # signed_runner's pickled result: its xs is bound to the task id
    return report._replace(outcome=sign_outcome(secret, task_id, report.outcome))


def task_label(msg: TaskMessage) -> str:
    """The task's registered name; ``_pickled`` for an unregistered pickled callable and
    "" for an unknown name (neither is a bounded set of names)."""
    if registry.find_task(msg.task) is not None:
        return msg.task
    return "_pickled" if msg.payload is not None else ""


def _run_msg(msg: TaskMessage, entry: Entry) -> Report:
    if msg.payload is not None:
        return _run_pickled(msg, entry)
    try:
        spec = registry.get_task(msg.task)
    except UnknownTaskError as exc:
        return dead_letter(entry, str(exc))
    limit = msg.timeout if msg.timeout is not None else spec.timeout
    try:
        if msg.chunk:
            return _run_chunk(msg, spec, limit)
        try:
            arm_timeout(limit)
            value = spec.fn(*msg.args, **msg.kwargs)
        finally:
            arm_timeout(None)
    except (Exception, SystemExit) as exc:  # a task calling sys.exit() fails, not the process
        return _retry(msg, spec, entry, exc) or Report(
            "fail", _routing(msg), encode_error(msg.id, describe_exception(exc)))
    finally:
        registry.run_after_task_hooks()
    return _encode_value(msg, value)


def _retry(msg: TaskMessage, spec: registry.TaskSpec, entry: Entry,
           exc: BaseException) -> Report | None:
    """The retry report if the task's policy retries ``exc`` at this attempt, else None."""
    if entry.attempt <= spec.retries and isinstance(exc, spec.retry_on):
        due_ms = int((time.time() + spec.retry_delay(entry.attempt, random.random())) * 1000)
        return Report("retry", _routing(msg), b"", entry.packed(entry.attempt + 1),
                      str(due_ms).encode())
    return None


def run_lost(entry: Entry, error: ErrorTriple, secret: bytes | None) -> Report:
    """The report for a task whose process died under it (WorkerLostError) or was killed
    at its hard time limit (TaskTimeoutError), decided in the node parent.

    The task's own retry policy applies, as to any error it raised: with ``retries`` and a
    matching ``retry_on`` it is retried with backoff, else it fails. The parent only reads
    the envelope and the registry (it runs no user code, and never loads a pickle): a
    signed pickled task is retried by the policy of the registered task its envelope
    names, if this node knows it. Chunks, unknown tasks and undecodable entries fail.
    """
    try:
        msg = decode(entry.body, entry.signature, secret, entry.queue)
        spec = registry.find_task(msg.task)
    except TaskqError:
        msg, spec = None, None
    if msg is None or spec is None or msg.chunk:
        routing = routing_of(entry.body)
        report = Report("fail", routing, encode_error(routing.task_id if routing else "?", error),
                        task="" if msg is None else task_label(msg))
    else:
        report = (_retry(msg, spec, entry, task_error(*error)) or Report(
            "fail", _routing(msg), encode_error(msg.id, error)))._replace(task=msg.task)
    return _signed(entry, report, secret) if msg is not None and msg.signed else report


def _encode_value(msg: TaskMessage, value: Any) -> Report:
    try:
        return Report("ok", _routing(msg), encode_ok(msg.id, value))
    except TypeError as exc:
        error = ("TypeError", f"result of {msg.task or 'task'} cannot travel as JSON: {exc}", "")
        return Report("fail", _routing(msg), encode_error(msg.id, error))


def _run_chunk(msg: TaskMessage, spec: registry.TaskSpec, limit: float | None) -> Report:
    """Many calls in one message: each item succeeds or fails on its own (an Exception
    or SystemExit fails just that item); the time limit applies per item."""
    fn, kwargs = spec.fn, msg.kwargs
    values: list[Any] = []
    errors: list[tuple[int, ErrorTriple]] = []
    t0 = time.perf_counter()
    for i, args in enumerate(msg.args):
        try:
            if limit is not None:
                arm_timeout(limit)
            values.append(fn(*args, **kwargs))
        except (Exception, SystemExit) as exc:
            values.append(None)
            errors.append((i, describe_exception(exc)))
        finally:
            if limit is not None:
                arm_timeout(None)
    try:
        outcome = encode_chunk(msg.id, values, errors, time.perf_counter() - t0)
    except TypeError as exc:
        error = ("TypeError", f"result of {msg.task} cannot travel as JSON: {exc}", "")
        return Report("fail", _routing(msg), encode_error(msg.id, error))
    return Report("ok", _routing(msg), outcome)


def _run_pickled(msg: TaskMessage, entry: Entry) -> Report:
    if _secret is None:
        error = ("SignatureError", "this worker does not run pickled payloads", "")
        return Report("fail", _routing(msg), encode_error(msg.id, error))
    # Only reached once a payload's signature has verified: load the pickle machinery.
    from taskq.node import signed_runner

    spec = registry.find_task(msg.task)  # a registered task travelling pickled, if known here
    limit = msg.timeout if msg.timeout is not None else spec.timeout if spec else None
    try:
        ran = signed_runner.run(msg.id, msg.payload or b"", _secret, limit)
    except Exception as exc:
        return Report("fail", _routing(msg), encode_error(msg.id, describe_exception(exc)))
    if ran.ok:
        return Report("ok", _routing(msg), ran.outcome)
    if ran.error is not None and not msg.chunk:
        # Loading the function may have imported (and so registered) its task module.
        spec = spec or registry.find_task(msg.task)
        retry = _retry(msg, spec, entry, ran.error) if spec is not None else None
        if retry is not None:
            return retry
    return Report("fail", _routing(msg), ran.outcome)
