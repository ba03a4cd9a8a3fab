"""The wire, with no I/O: the task envelope and its decoding, the packed stream entry,
reports and dead letters; this docstring describes the whole wire format.

Outcomes (encoding, decoding, the description of an exception) are owned by
:mod:`taskq.outcome`, signatures (``s``, ``os``, ``exp``) by :mod:`taskq.signing`; both
sit below this module and never import it. Both sides of Redis import these three;
they import neither side.

A task is one stream entry with these fields:

- ``m``: the envelope, a JSON object (keys below);
- ``s``: optional HMAC-SHA256 tag (:func:`taskq.signing.tag`: 128 bits, 22 characters of
  base64url) of ``domain || queue || m`` under the message key
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
when none failed); producers see it as one :class:`~taskq.outcome.ChunkResult`,
whichever way it travelled (a pickled chunk's result is the same type, see
:mod:`taskq.signed`). The outcome of a signed task carries ``os``, the HMAC (result key,
bound to the task id) of the outcome's JSON without it
(:func:`taskq.signing.sign_outcome`): a producer with a secret takes for its tasks only
replies that verify, so a forged reply resolves no future.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from taskq.errors import ExpiredError, MessageError, SignatureError
from taskq.outcome import DEAD_LETTER_ERROR, encode_error, unfaithful
from taskq.signing import sign_outcome, verify


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
        return EnvelopeEncoder(self, expires).encode(self.id, self.args, self.payload)


class EnvelopeEncoder:
    """Envelopes of calls that share everything but the task id, the arguments and the
    pickled payload (one task, one set of options: a batch, a map's chunks, or a single
    message): the shared part is encoded once, as the JSON object's tail, and each
    envelope is ``{"id":…,"a":…`` (``"p":…``) plus that tail. The one envelope encoder."""

    __slots__ = ("_tail", "task")

    def __init__(self, template: TaskMessage, expires: float | None = None) -> None:
        """Everything of ``template`` but ``id``, ``args`` and ``payload``; ``expires``
        (unix s) overrides its :attr:`~TaskMessage.expires`."""
        self.task = template.task
        env: dict[str, Any] = {"t": template.task}
        if template.kwargs:
            unfaithful((), template.kwargs, f"argument of task {template.task!r}")
            env["k"] = template.kwargs
        if template.reply_to:
            env["r"] = template.reply_to
        if template.batch:
            env["b"] = template.batch
        if template.keep_result:
            env["kr"] = 1
        if template.timeout is not None:
            env["to"] = template.timeout
        if template.chunk:
            env["c"] = 1
        expires = template.expires if expires is None else expires
        if expires is not None:
            env["exp"] = int(expires)
        if template.traceparent is not None:
            env["tp"] = template.traceparent
            if template.tracestate:
                env["ts"] = template.tracestate
        self._tail = self._dumps(env)[1:]  # '"t":…}': never empty, it names the task

    def encode(self, task_id: str, args: list[Any], payload: bytes | None = None) -> bytes:
        """One envelope. TypeError for arguments JSON would not give back exactly."""
        if payload is not None:
            return b'{"id":%s,"a":[],"p":"%s",%s' % (
                orjson.dumps(task_id), base64.b64encode(payload), self._tail)
        unfaithful(args, None, f"argument of task {self.task!r}")
        return b'{"id":%s,"a":%s,%s' % (orjson.dumps(task_id), self._dumps(args), self._tail)

    def _dumps(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError as exc:
            raise TypeError(f"arguments of task {self.task!r} are not JSON-serializable: {exc}") from None


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
