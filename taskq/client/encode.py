"""The one encoder of every producer (:class:`~taskq.client.client.Client` and
:class:`~taskq.client.aio.AsyncClient`): a built :class:`~taskq.message.TaskMessage`
becomes the ``(body, signature)`` that goes on the stream.

It runs in the caller's thread (or asyncio task), so a value JSON cannot carry or a
message over the size limit raises at the call that made it, never fails calls written
with it, and the active trace context (:mod:`taskq.client.tracing`) is the caller's.
With a secret every envelope is signed: bound to the queue, with an expiry (``exp``).
"""

from __future__ import annotations

import time

from taskq.broker.queue import Signed
from taskq.client import tracing
from taskq.config import Settings
from taskq.message import TaskMessage
from taskq.signing import sign


def envelope(msg: TaskMessage, settings: Settings, queue: str, ttl: float) -> Signed:
    """The stream bytes of ``msg`` for ``queue``; ``ttl`` is the seconds a signed envelope
    stays runnable. TypeError for arguments JSON would change, ValueError over
    ``settings.max_message_bytes``."""
    msg = tracing.stamp(msg)
    secret = settings.secret
    if secret is None:
        body, signature = msg.encode(), None
    else:
        body = msg.encode(time.time() + ttl)
        signature = sign(secret, queue, body)
    if len(body) > settings.max_message_bytes:
        raise ValueError(
            f"task {msg.task!r}: its message is {len(body)} bytes, over the "
            f"{settings.max_message_bytes}-byte limit (Settings.max_message_bytes): "
            "pass a reference to large data (a path, a key), not the data")
    return body, signature
