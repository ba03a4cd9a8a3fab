"""Signing, with no I/O: the HMAC of an envelope for its queue (:func:`sign`,
:func:`verify`), of an outcome for its task (:func:`sign_outcome`,
:func:`outcome_verifies`), their domains, and the lifetime a producer signs into an
envelope (:data:`SIGNED_TTL`).

The keys come from the shared secret through :func:`taskq.config.derive_key`, which stays
in config beside :func:`~taskq.config.check_secret`: config owns the secret. What is signed
and where each signature travels is the wire format of :mod:`taskq.message`; this module
does not import it.

Every tag is HMAC-SHA256 truncated to 128 bits, written as 22 characters of unpadded
URL-safe base64 (:func:`tag`): a forger's chance per guess is 2^-128, and a queued task
costs Redis 22 bytes of signature instead of 64. Truncation to 128 bits is what RFC 4868
(HMAC-SHA-256-128) and NIST SP 800-107 allow. The 64-hex-digit tags of earlier releases
still verify (:func:`tag_matches`), so entries queued before an upgrade run after it.
"""

from __future__ import annotations

import binascii
import functools
import hmac
from typing import Any

import orjson

from taskq.config import derive_key
from taskq.errors import SignatureError

SIGNED_TTL = 7 * 24 * 3600.0
"""The default lifetime (s) a producer signs into an envelope (``exp``): generous, so only
a stale or replayed entry ever meets it."""
_MSG_DOMAIN, _OUTCOME_DOMAIN = b"taskq-message\x00", b"taskq-outcome\x00"
_RESULT_DOMAIN = b"taskq-result\x00"


@functools.lru_cache(maxsize=256)
def _keyed(secret: bytes, purpose: str, prefix: bytes) -> hmac.HMAC:
    """An HMAC under the derived key for ``purpose`` that has absorbed ``prefix`` (a
    domain, and the queue for messages), made once: each tag copies it (C) instead of
    deriving the key and setting up the HMAC again, a third of the cost of a tag."""
    return hmac.new(derive_key(secret, purpose), prefix, "sha256")


def _digest(secret: bytes, purpose: str, prefix: bytes, data: bytes) -> bytes:
    mac = _keyed(secret, purpose, prefix).copy()
    mac.update(data)
    return mac.digest()


def tag(digest: bytes) -> bytes:
    """The written form of a MAC: its first 128 bits, unpadded URL-safe base64 (22 bytes,
    never ``|``: a packed entry splits on it)."""
    return binascii.b2a_base64(digest[:16], newline=False)[:22].translate(_URL_SAFE)


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def tag_matches(digest: bytes, given: bytes) -> bool:
    """Does ``given`` (a :func:`tag`, or an earlier release's 64 hex digits) carry
    ``digest``? Constant time in the tag's content."""
    if len(given) == 64:
        return hmac.compare_digest(digest.hex().encode(), given)
    return hmac.compare_digest(tag(digest), given)


@functools.lru_cache(maxsize=256)
def _message_mac(secret: bytes, queue: str) -> hmac.HMAC:
    return _keyed(secret, "messages", b"%s%s\x00" % (_MSG_DOMAIN, queue.encode()))


def _message_digest(secret: bytes, queue: str, body: bytes) -> bytes:
    """The hot path of every producer and node: one cached look-up, a copy, an update."""
    mac = _message_mac(secret, queue).copy()
    mac.update(body)
    return mac.digest()


def sign(secret: bytes, queue: str, body: bytes) -> bytes:
    """The ``s`` of an envelope ``body`` sent on ``queue``."""
    return tag(_message_digest(secret, queue, body))


def verify(secret: bytes | None, queue: str, body: bytes, signature: bytes | None) -> None:
    if signature is None:
        raise SignatureError("payload is not signed")
    if secret is None:
        raise SignatureError("signed payload but this worker has no TASKQ_SECRET")
    if not tag_matches(_message_digest(secret, queue, body), signature):
        raise SignatureError(f"payload signature does not match this worker's TASKQ_SECRET "
                             f"for queue {queue!r}")


def sign_outcome(secret: bytes, task_id: str, outcome: bytes) -> bytes:
    """An outcome JSON object signed for ``task_id``: ``os`` appended, the HMAC (result
    key) of the object's JSON without it. orjson writes what it parses back byte for
    byte, so the producer recomputes it from the parsed object (:func:`outcome_verifies`)."""
    sig = tag(_outcome_digest(secret, task_id, outcome))
    return b"%s,\"os\":\"%s\"}" % (outcome[:-1], sig)


def _outcome_digest(secret: bytes, task_id: str, outcome: bytes) -> bytes:
    return _digest(secret, "results", _OUTCOME_DOMAIN, b"%s\x00%s" % (task_id.encode(), outcome))


def _result_digest(secret: bytes, task_id: str, text: bytes) -> bytes:
    return _digest(secret, "results", _RESULT_DOMAIN, b"%s\x00%s" % (task_id.encode(), text))


def result_signature(secret: bytes, task_id: str, text: bytes) -> str:
    """``xs``: the tag (result key) of a pickled result's text (:mod:`taskq.signed`),
    bound to its task id."""
    return tag(_result_digest(secret, task_id, text)).decode()


def result_verifies(secret: bytes, task_id: str, text: bytes, xs: bytes) -> bool:
    return tag_matches(_result_digest(secret, task_id, text), xs)


def outcome_verifies(secret: bytes, task_id: str, obj: dict[str, Any]) -> bool:
    """Is the parsed outcome ``obj`` signed (``os``, or ``xs`` for a pickled result, which
    :mod:`taskq.signed` checks in full) for ``task_id``?"""
    if obj.get("id") != task_id:
        return False
    if "x" in obj:
        text, xs = obj.get("x"), obj.get("xs")
        if not isinstance(text, str) or not isinstance(xs, str):
            return False
        return result_verifies(secret, task_id, text.encode(), xs.encode())
    sig = obj.get("os")
    if not isinstance(sig, str):
        return False
    try:
        body = orjson.dumps({k: v for k, v in obj.items() if k != "os"})
    except TypeError:
        return False
    return tag_matches(_outcome_digest(secret, task_id, body), sig.encode())
