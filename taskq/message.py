"""The wire, with no I/O: the task envelope, the packed stream entry, outcomes, reports,
the one description of an exception, and signing.

Both sides of Redis import this module; it imports neither.

A task is one stream entry with these fields:

- ``m``: the envelope, a JSON object (keys below);
- ``s``: optional hex HMAC-SHA256 of ``domain || queue || m`` under the message key
  derived from the shared secret (:func:`taskq.config.derive_key`). Binding the queue
  means an entry copied onto another queue does not verify there; the task id, the reply
  inbox and the expiry ``exp`` are in ``m``, so none can be changed either. A producer
  with a secret signs every envelope. Envelopes that carry pickled data (``p``) are
  refused unless ``s`` verifies, checked before anything in ``m`` is decoded beyond
  plain JSON; a node with ``require_signed`` refuses every unsigned one.
- ``n``: the attempt number (absent = 1). It lives outside the signed envelope so a
  retry does not need the secret; tampering with it can only change retry accounting.

Envelope keys: ``id`` task id, ``t`` task name, ``a`` args (a list; for a chunk, a list of
argument lists), ``k`` kwargs, ``r`` reply inbox (client id), ``b`` batch id, ``kr`` keep
the result, ``to`` timeout override (s), ``c`` 1 for a chunk, ``p`` base64 pickle,
``exp`` the unix time (s) after which a node refuses the entry (signed envelopes),
``tp``/``ts`` the W3C traceparent/tracestate of the producer's span (optional).

An outcome is a JSON object ``{"id", "ok": true, "v"}`` or ``{"id", "ok": false,
"e": [type, message, traceback]}``. A chunk's outcome is ``{"id", "ok": true, "c": 1,
"v": [values], "ie": [[index, [type, message, traceback]], ...], "d": seconds}``: each
item succeeds or fails on its own (``v`` holds null at a failed index, ``ie`` is absent
when none failed); producers see it as one :class:`ChunkResult`, whichever way it
travelled (a pickled chunk's result is the same type, see :mod:`taskq.signed`).
The outcome of a signed task carries ``os``, the HMAC (result key, bound to the task id)
of the outcome's JSON without it (:func:`sign_outcome`): a producer with a secret takes
for its tasks only replies that verify, so a forged reply resolves no future.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from taskq.config import derive_key
from taskq.errors import ExpiredError, MessageError, SignatureError, TaskError, task_error

ErrorTriple = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class TaskMessage:
    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    batch: str | None = None
    keep_result: bool = True
    timeout: float | None = None
    chunk: bool = False
    payload: bytes | None = None
    """Pickled ``(callable, args, kwargs)`` data; only ever loaded from a signed envelope."""
    expires: float | None = None
    """Unix time (s) after which a node refuses this entry (``exp``, signed with it)."""
    signed: bool = False
    """Set by :func:`decode` when the envelope's signature verified (never encoded)."""
    traceparent: str | None = None
    """W3C trace context of the producer's active span (``tp``/``ts``, inside the signed
    body), for the task to continue the trace (:func:`taskq.current_task`)."""
    tracestate: str | None = None

    def encode(self, expires: float | None = None) -> bytes:
        """The envelope JSON; ``expires`` (unix s) overrides :attr:`expires`."""
        env: dict[str, Any] = {"id": self.id, "t": self.task, "a": self.args}
        if self.kwargs:
            env["k"] = self.kwargs
        if self.reply_to:
            env["r"] = self.reply_to
        if self.batch:
            env["b"] = self.batch
        if self.keep_result:
            env["kr"] = 1
        if self.timeout is not None:
            env["to"] = self.timeout
        if self.chunk:
            env["c"] = 1
        if self.payload is not None:
            env["p"] = base64.b64encode(self.payload).decode()
        expires = self.expires if expires is None else expires
        if expires is not None:
            env["exp"] = int(expires)
        if self.traceparent is not None:
            env["tp"] = self.traceparent
            if self.tracestate:
                env["ts"] = self.tracestate
        if self.payload is None:
            unfaithful(self.args, self.kwargs, f"argument of task {self.task!r}")
        try:
            return orjson.dumps(env)
        except TypeError as exc:
            raise TypeError(f"arguments of task {self.task!r} are not JSON-serializable: {exc}") from None


_INT_RANGE = range(-(2**63), 2**64)  # what orjson writes as a JSON integer


def unfaithful(args: Sequence[Any], kwargs: dict[str, Any] | None, what: str) -> None:
    """Raise TypeError naming the first value JSON would not give back exactly (NaN and
    ±Infinity become null, tuples lists, datetimes and UUIDs strings): a value is never
    changed silently on the way. Plain JSON values pass."""
    todo: list[tuple[str, Any]] = [(f"[{i}]", v) for i, v in enumerate(args)]
    if kwargs:
        todo.extend((f"[{k!r}]", v) for k, v in kwargs.items())
    while todo:
        path, v = todo.pop()
        t = type(v)
        if t is str or t is bool or v is None or (t is int and v in _INT_RANGE):
            continue
        if t is float and math.isfinite(v):
            continue
        if t is list:
            todo.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif t is dict and all(type(k) is str for k in v):
            todo.extend((f"{path}[{k!r}]", x) for k, x in v.items())
        else:
            raise TypeError(f"{what} {path} ({_short(v)}) is not JSON-serializable without "
                            "change: use lists, str-keyed dicts, str, finite numbers (or a "
                            "registered task and a secret: it then travels pickled)")


def _short(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


_FIELD_BODY, _FIELD_SIG, _FIELD_ATTEMPT = b"m", b"s", b"n"


class Entry(NamedTuple):
    """One stream entry as a node handles it: raw bytes, decoded only in a pool process.
    A NamedTuple: one crosses the pool's pipe per task."""

    entry_id: bytes
    body: bytes
    signature: bytes | None
    attempt: int
    queue: str = ""
    """The queue the node read it from (its signature must verify for that queue)."""

    def packed(self, attempt: int | None = None) -> bytes:
        """``<attempt>|<sig>|<body>``: the form kept in the delayed set and the dead-letter
        stream (promote.lua parses it back)."""
        return b"%d|%s|%s" % (self.attempt if attempt is None else attempt,
                              self.signature or b"", self.body)

    @classmethod
    def unpack(cls, packed: bytes, entry_id: bytes = b"") -> Entry:
        attempt, sig, body = packed.split(b"|", 2)
        return cls(entry_id, body, sig or None, int(attempt))

    @classmethod
    def from_fields(cls, entry_id: bytes, fields: Sequence[bytes] | dict[bytes, bytes]) -> Entry:
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        try:
            attempt = int(fields.get(_FIELD_ATTEMPT, b"1"))
        except ValueError:
            attempt = 1
        return cls(entry_id, fields.get(_FIELD_BODY, b""), fields.get(_FIELD_SIG), attempt)

    def fields(self) -> dict[bytes, bytes]:
        """The stream fields to XADD this entry with."""
        return stream_fields(self.body, self.signature, self.attempt)


def stream_fields(body: bytes, signature: bytes | None = None, attempt: int = 1) -> dict[bytes, bytes]:
    fields = {_FIELD_BODY: body}
    if signature:
        fields[_FIELD_SIG] = signature
    if attempt != 1:
        fields[_FIELD_ATTEMPT] = str(attempt).encode()
    return fields


class Routing(NamedTuple):
    """Where an outcome goes: enough of an envelope to report on it. A NamedTuple, as
    one crosses the pool's pipe per task and tuples unpickle several times faster."""

    task_id: str
    reply_to: str | None
    batch: str | None
    keep_result: bool


class Report(NamedTuple):
    """What a node records for one finished entry (broker.Broker.complete applies it).

    ``kind`` is ok | fail | retry | dead; ``outcome`` the outcome JSON for the result key,
    the reply inbox and the batch (empty for a retry); for a retry ``packed`` is the entry
    to run again and ``extra`` its due time in ms; for a dead letter ``packed`` is the
    entry and ``extra`` the reason. ``task`` names the task for the node's metrics: its
    registered name, ``_pickled`` for a pickled callable, empty if unknown.
    """

    kind: str
    routing: Routing | None
    outcome: bytes
    packed: bytes = b""
    extra: bytes = b""
    task: str = ""


DEAD_LETTER_ERROR = "DeadLetteredError"
"""The error type a producer sees for every dead-lettered task, whatever the reason."""


def dead_letter(entry: Entry, reason: str, secret: bytes | None = None) -> Report:
    """The one dead-letter report: never run, kept with its reason; the producer (if the
    envelope names one) gets a DeadLetteredError that says why.

    With the node's ``secret``, the outcome is signed for its task exactly when the entry
    carries a valid signature for its queue: a producer that signs waits only for signed
    replies, and a forged entry must never earn one."""
    routing = routing_of(entry.body)
    outcome = encode_error(routing.task_id if routing else "?",
                           (DEAD_LETTER_ERROR, f"dead-lettered: {reason}", ""))
    if secret is not None and routing is not None and entry.signature is not None:
        try:
            verify(secret, entry.queue, entry.body, entry.signature)
        except SignatureError:
            pass
        else:
            outcome = sign_outcome(secret, routing.task_id, outcome)
    return Report("dead", routing, outcome, entry.packed(), reason.encode())


def describe_exception(exc: BaseException) -> ErrorTriple:
    """An exception as (qualified type name, message, traceback text): the one form every
    error takes on the wire. A TaskError keeps the remote type and traceback it carries."""
    if isinstance(exc, TaskError):
        return (exc.type_name, exc.message, exc.remote_traceback or "".join(
            traceback.format_exception(exc)))
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    return (name, message, "".join(traceback.format_exception(exc)))


SIGNED_TTL = 7 * 24 * 3600.0
"""The default lifetime (s) a producer signs into an envelope (``exp``): generous, so only
a stale or replayed entry ever meets it."""
_MSG_DOMAIN, _OUTCOME_DOMAIN = b"taskq-message\x00", b"taskq-outcome\x00"


def sign(secret: bytes, queue: str, body: bytes) -> bytes:
    """The ``s`` of an envelope ``body`` sent on ``queue``."""
    mac = hmac.new(derive_key(secret, "messages"), _MSG_DOMAIN, hashlib.sha256)
    mac.update(queue.encode() + b"\x00")
    mac.update(body)
    return mac.hexdigest().encode()


def verify(secret: bytes | None, queue: str, body: bytes, signature: bytes | None) -> None:
    if signature is None:
        raise SignatureError("payload is not signed")
    if secret is None:
        raise SignatureError("signed payload but this worker has no TASKQ_SECRET")
    if not hmac.compare_digest(sign(secret, queue, body), signature):
        raise SignatureError(f"payload signature does not match this worker's TASKQ_SECRET "
                             f"for queue {queue!r}")


def sign_outcome(secret: bytes, task_id: str, outcome: bytes) -> bytes:
    """An outcome JSON object signed for ``task_id``: ``os`` appended, the HMAC (result
    key) of the object's JSON without it. orjson writes what it parses back byte for
    byte, so the producer recomputes it from the parsed object (:func:`outcome_verifies`)."""
    sig = _outcome_mac(secret, task_id, outcome)
    return b"%s,\"os\":\"%s\"}" % (outcome[:-1], sig)


def _outcome_mac(secret: bytes, task_id: str, outcome: bytes) -> bytes:
    mac = hmac.new(derive_key(secret, "results"), _OUTCOME_DOMAIN, hashlib.sha256)
    mac.update(task_id.encode() + b"\x00")
    mac.update(outcome)
    return mac.hexdigest().encode()


def outcome_verifies(secret: bytes, task_id: str, obj: dict[str, Any]) -> bool:
    """Is the parsed outcome ``obj`` signed (``os``, or ``xs`` for a pickled result, which
    :mod:`taskq.signed` checks in full) for ``task_id``?"""
    if obj.get("id") != task_id:
        return False
    if "x" in obj:
        text, xs = obj.get("x"), obj.get("xs")
        if not isinstance(text, str) or not isinstance(xs, str):
            return False
        from taskq.signed import result_signature  # a pickled result: loaded next anyway

        return hmac.compare_digest(result_signature(secret, task_id, text.encode()).encode(),
                                   xs.encode())
    sig = obj.get("os")
    if not isinstance(sig, str):
        return False
    try:
        body = orjson.dumps({k: v for k, v in obj.items() if k != "os"})
    except TypeError:
        return False
    return hmac.compare_digest(_outcome_mac(secret, task_id, body), sig.encode())


def _parse(body: bytes) -> dict[str, Any]:
    try:
        env = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"envelope is not JSON: {exc}") from None
    if not isinstance(env, dict):
        raise MessageError("envelope is not a JSON object")
    tid = env.get("id")
    if not isinstance(tid, str) or not tid:
        raise MessageError("envelope has no task id")
    return env


def routing_of(body: bytes) -> Routing | None:
    """Best-effort routing of a possibly bad envelope (None if it has none)."""
    try:
        env = _parse(body)
    except MessageError:
        return None
    reply, batch = env.get("r"), env.get("b")
    return Routing(
        env["id"],
        reply if isinstance(reply, str) and reply else None,
        batch if isinstance(batch, str) and batch else None,
        bool(env.get("kr")),
    )


def decode(body: bytes, signature: bytes | None, secret: bytes | None, queue: str = "",
           require_signed: bool = False) -> TaskMessage:
    """Envelope bytes read from ``queue`` → :class:`TaskMessage`, refusing bad shapes,
    unsigned pickles (every unsigned envelope with ``require_signed``), signatures made
    for another queue or body, and expired entries (:class:`ExpiredError`)."""
    env = _parse(body)
    signed = _check_signature(env, body, signature, secret, queue, require_signed)
    name, args, kwargs = env.get("t", ""), env.get("a", []), env.get("k", {})
    if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        raise MessageError("envelope fields t/a/k have the wrong types")
    timeout = env.get("to")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise MessageError("envelope timeout must be a positive number")
    chunk = bool(env.get("c"))
    if chunk and not all(isinstance(a, list) for a in args):
        raise MessageError("chunk envelope must carry a list of argument lists")
    raw_payload = env.get("p")
    payload: bytes | None = None
    if raw_payload is not None:
        if not isinstance(raw_payload, str):
            raise MessageError("envelope payload must be base64 text")
        try:
            payload = base64.b64decode(raw_payload, validate=True)
        except ValueError:
            raise MessageError("envelope payload is not valid base64") from None
    elif not name:
        raise MessageError("envelope names no task")
    exp = env.get("exp")
    reply, batch = env.get("r"), env.get("b")
    tp, ts = env.get("tp"), env.get("ts")  # advice: a bad one is dropped, never refused
    return TaskMessage(
        id=env["id"],
        task=name,
        args=args,
        kwargs=kwargs,
        reply_to=reply if isinstance(reply, str) and reply else None,
        batch=batch if isinstance(batch, str) and batch else None,
        keep_result=bool(env.get("kr")),
        timeout=float(timeout) if timeout is not None else None,
        chunk=chunk,
        payload=payload,
        expires=float(exp) if isinstance(exp, (int, float)) else None,
        signed=signed,
        traceparent=tp if isinstance(tp, str) else None,
        tracestate=ts if isinstance(ts, str) else None,
    )


def _check_signature(env: dict[str, Any], body: bytes, signature: bytes | None,
                     secret: bytes | None, queue: str, require_signed: bool) -> bool:
    """Verify before anything else is decoded (a pickle above all); True if signed."""
    if signature is None:
        if "p" in env:
            raise SignatureError("payload is not signed")
        if require_signed:
            raise SignatureError("entry is not signed and this worker requires signed messages")
        return False
    # A signed entry needs the secret even by name: its producer takes only signed replies.
    verify(secret, queue, body, signature)
    exp = env.get("exp")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise MessageError("envelope expiry must be a number")
        if time.time() > exp:
            raise ExpiredError(f"expired at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(exp))} UTC")
    return True


# -- outcomes -----------------------------------------------------------------------


def encode_ok(task_id: str, value: Any) -> bytes:
    """TypeError if JSON would not give ``value`` back exactly (see :func:`unfaithful`)."""
    unfaithful((value,), None, "result")
    return orjson.dumps({"id": task_id, "ok": True, "v": value})


def encode_error(task_id: str, error: ErrorTriple) -> bytes:
    return orjson.dumps({"id": task_id, "ok": False, "e": list(error)})


def encode_chunk(task_id: str, values: list[Any], errors: Sequence[tuple[int, ErrorTriple]],
                 duration: float) -> bytes:
    """A chunk's outcome: the values in order (None where an item failed), the failed
    items' errors by index, and the seconds the chunk's work took."""
    unfaithful(values, None, "result")
    obj: dict[str, Any] = {"id": task_id, "ok": True, "c": 1, "v": values, "d": duration}
    if errors:
        obj["ie"] = [[i, list(e)] for i, e in errors]
    return orjson.dumps(obj)


class ChunkResult:
    """The results of one chunk (many calls in one message), on the producer: ``values``
    in order, ``errors`` (the failed items' exceptions) by index, ``duration`` the
    seconds of work on the worker (None if unknown). Iterating yields the values in
    order and raises at the first failed item, like ``map``; :meth:`item` reads one
    item (value or raise) so a caller can go on after a failure, like ``imap``."""

    __slots__ = ("duration", "errors", "values")

    def __init__(self, values: list[Any], errors: dict[int, BaseException] | None = None,
                 duration: float | None = None) -> None:
        self.values = values
        self.errors: dict[int, BaseException] = errors or {}
        self.duration = duration

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        if not self.errors:
            return iter(self.values)
        return (self.item(i) for i in range(len(self.values)))

    def item(self, index: int) -> Any:
        """The value of item ``index``, or raise its error."""
        error = self.errors.get(index) if self.errors else None
        if error is not None:
            raise error
        return self.values[index]

    def first_error(self) -> BaseException | None:
        """The error of the lowest failed index, if any."""
        return self.errors[min(self.errors)] if self.errors else None

    def raise_first(self) -> None:
        """Raise the error of the lowest failed index, if any item failed."""
        error = self.first_error()
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"<ChunkResult {len(self.values)} items, {len(self.errors)} failed>"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decoded outcome; a chunk's ``value`` is its :class:`ChunkResult`."""

    task_id: str
    ok: bool
    value: Any = None
    error: ErrorTriple | None = None
    exc: BaseException | None = None
    """The exception itself, when it came back pickled (its own type, not a TaskError)."""

    def result(self) -> Any:
        """The value, or raise the remote error as a :class:`TaskError`."""
        if self.ok:
            return self.value
        raise self.exception()

    def exception(self) -> BaseException:
        if self.exc is not None:
            return self.exc
        assert self.error is not None
        return task_error(*self.error)


def _error_triple(err: Any) -> ErrorTriple:
    """``[type, message, traceback]``, strictly: a bad shape is a MessageError, never a
    made-up error (a malformed reply must not resolve a future)."""
    if not isinstance(err, list) or len(err) != 3 or not all(isinstance(x, str) for x in err):
        raise MessageError(f"malformed error in outcome: {str(err)[:80]}")
    return (err[0], err[1], err[2])


def _chunk_result(obj: dict[str, Any]) -> ChunkResult:
    values, duration, ie = obj.get("v"), obj.get("d"), obj.get("ie") or []
    if not isinstance(values, list) or not isinstance(ie, list):
        raise MessageError("malformed chunk outcome")
    errors: dict[int, BaseException] = {}
    for item in ie:
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int
                or not 0 <= item[0] < len(values)):
            raise MessageError("malformed chunk outcome")
        errors[item[0]] = task_error(*_error_triple(item[1]))
    return ChunkResult(values, errors, float(duration) if isinstance(duration, (int, float)) else None)


def decode_outcome(raw: bytes | dict[str, Any], secret: bytes | None = None) -> Outcome:
    """An outcome (JSON text or parsed) → :class:`Outcome`; MessageError if malformed.
    A pickled result (``x``) is verified with ``secret`` and loaded (an error if there
    is none): a stored result reads back as the value the future got."""
    obj = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise MessageError("malformed outcome")
    if "x" in obj:
        from taskq import signed  # only for a pickled result: it loads cloudpickle

        ok, value = signed.load_outcome(obj, secret)
        if ok:
            return Outcome(obj["id"], True, value)
        return Outcome(obj["id"], False, error=describe_exception(value), exc=value)
    if obj.get("ok") is True:
        return Outcome(obj["id"], True, _chunk_result(obj) if "c" in obj else obj.get("v"))
    if obj.get("ok") is False:
        return Outcome(obj["id"], False, error=_error_triple(obj.get("e")))
    raise MessageError("malformed outcome: no ok")


def decode_outcomes(blob: bytes) -> list[Outcome]:
    """An inbox element: a JSON array of outcomes pushed by one completion call."""
    items = orjson.loads(blob)
    if isinstance(items, dict):
        items = [items]
    return [decode_outcome(o) for o in items]
