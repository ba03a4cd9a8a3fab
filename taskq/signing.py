"""Signing, with no I/O: the HMAC of an envelope for its queue (:func:`sign`,
:func:`verify`), of an outcome for its task (:func:`sign_outcome`,
:func:`outcome_verifies`), their domains, and the lifetime a producer signs into an
envelope (:data:`SIGNED_TTL`).

The keys come from the shared secret through :func:`taskq.config.derive_key`, which stays
in config beside :func:`~taskq.config.check_secret`: config owns the secret. What is signed
and where each signature travels is the wire format of :mod:`taskq.message`; this module
does not import it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from taskq.config import derive_key
from taskq.errors import SignatureError

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
