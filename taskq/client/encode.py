"""The one encoder of every producer (:class:`~taskq.client.client.Client` and
:class:`~taskq.client.aio.AsyncClient`): a built :class:`~taskq.message.TaskMessage`
becomes the ``(body, signature)`` that goes on the stream (:func:`envelope`), and many
calls of one task with the same options become theirs without building a message each
(:class:`Calls`: a batch, ``submit_many``, a map's chunks).

It runs in the caller's thread (or asyncio task), so a value JSON cannot carry or a
message over the size limit raises at the call that made it, never fails calls written
with it, and the active trace context (:mod:`taskq.client.tracing`) is the caller's.
With a secret every envelope is signed: bound to the queue, with an expiry (``exp``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskq.broker.queue import Signed
from taskq.client import calls, tracing
from taskq.client.calls import CallOptions, TaskRef
from taskq.config import Settings
from taskq.message import EnvelopeEncoder, TaskMessage
from taskq.signing import sign

if TYPE_CHECKING:
    from taskq.client.producer import Producer


def envelope(msg: TaskMessage, settings: Settings, queue: str, ttl: float) -> Signed:
    """The stream bytes of ``msg`` for ``queue``; ``ttl`` is the seconds a signed envelope
    stays runnable. TypeError for arguments JSON would change, ValueError over
    ``settings.max_message_bytes``."""
    msg = tracing.stamp(msg)
    expires = None if settings.secret is None else time.time() + ttl
    return finish(msg.task, msg.encode(expires), settings, queue)


def finish(task: str, body: bytes, settings: Settings, queue: str) -> Signed:
    """``body`` checked against the size limit and signed (with a secret)."""
    if len(body) > settings.max_message_bytes:
        raise ValueError(
            f"task {task!r}: its message is {len(body)} bytes, over the "
            f"{settings.max_message_bytes}-byte limit (Settings.max_message_bytes): "
            "pass a reference to large data (a path, a key), not the data")
    return body, None if settings.secret is None else sign(settings.secret, queue, body)


class Calls:
    """The envelopes of many calls of ``fn`` with one set of options (each with its own
    task id): each call is routed as :func:`taskq.client.calls.route` says; those that
    travel by name share one :class:`~taskq.message.EnvelopeEncoder` (no message object,
    no re-encoding of what they share), the others are built one by one. Per call it
    costs a few µs instead of tens. The trace context is the one active when the first
    call by name is encoded: a client keeps one only for calls made with no active span
    (:meth:`taskq.client.client.Client.submit`)."""

    def __init__(self, producer: Producer, fn: TaskRef, options: CallOptions, *,
                 chunk: bool = False, star: bool = True) -> None:
        self._producer, self.fn, self._options = producer, fn, options
        self._chunk, self._star = chunk, star
        self._settings = producer.settings
        self._reply_to = producer.client_id if options.reply else None
        self._encoder: EnvelopeEncoder | None = None  # made at the first call by name
        self._encoder_until = 0.0  # when its expiry (``exp``) is a second too early
        # A task named by a str always travels by name: routed once, not per call.
        self._route = calls.route(fn, (), None) if isinstance(fn, str) else None

    def envelope(self, task_id: str, args: Sequence[Any]) -> Signed:
        settings, fn = self._settings, self.fn
        pickled, spec = self._route or calls.route(fn, args, None, self._chunk, self._star,
                                                   settings.secret is not None)
        if pickled:
            options = dataclasses.replace(self._options, task_id=task_id)
            msg = self._producer.message(fn, args, chunk=self._chunk, star=self._star,
                                         options=options)
            return envelope(msg, settings, self._producer.queue, self._producer.message_ttl)
        encoder = self._encoder
        if encoder is None or (self._encoder_until and time.time() > self._encoder_until):
            encoder = self._make_encoder()
        body = encoder.encode(task_id, calls.call_args(spec, args, {}, self._chunk, self._star))
        return finish(encoder.task, body, settings, self._producer.queue)

    def _make_encoder(self) -> EnvelopeEncoder:
        template = tracing.stamp(calls.by_name_template(
            self.fn, {}, self._reply_to, self._options, self._chunk))
        expires = None
        if self._settings.secret is not None:  # kept for a second: ``exp`` is in seconds
            now = time.time()
            expires, self._encoder_until = now + self._producer.message_ttl, now + 1.0
        self._encoder = EnvelopeEncoder(template, expires)
        return self._encoder

