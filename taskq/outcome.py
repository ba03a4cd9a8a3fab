"""Outcomes on the wire, with no I/O: what a task ended with, encoded and decoded; the one
description of an exception; the rule that JSON gives every value back exactly.

The node encodes (:func:`encode_ok`, :func:`encode_error`, :func:`encode_chunk`,
:func:`describe_exception`), the producer reads back (:class:`Outcome`,
:class:`ChunkResult`, :func:`decode_outcome`); :func:`unfaithful` guards results here and
envelope arguments in :mod:`taskq.message`.

The outcome format is described with the rest of the wire in :mod:`taskq.message`; an
outcome's signature ``os`` is made and checked by :mod:`taskq.signing`. This module imports
neither of them (message builds on it), nor either side of Redis.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from taskq.errors import MessageError, TaskError, task_error

ErrorTriple = tuple[str, str, str]


_INT_RANGE = range(-(2**63), 2**64)  # what orjson writes as a JSON integer


def json_exact(values: list[Any]) -> bool:
    """The one rule of what JSON gives back exactly: str, bool, None, 64-bit ints, finite
    floats, and lists and str-keyed dicts of those (NaN and ±Infinity would become null,
    tuples lists, datetimes and UUIDs strings, …). Consumes ``values``; a tight loop, as
    producers check every call of a registered function with it."""
    while values:
        v = values.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if v not in _INT_RANGE:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        elif t is list:
            values.extend(v)
        elif t is dict:
            if not all(type(k) is str for k in v):
                return False
            values.extend(v.values())
        else:
            return False
    return True


def unfaithful(args: Sequence[Any], kwargs: dict[str, Any] | None, what: str) -> None:
    """Raise TypeError naming the first value JSON would not give back exactly
    (:func:`json_exact`): a value is never changed silently on the way."""
    if json_exact([*args, *(kwargs.values() if kwargs else ())]):
        return
    todo: list[tuple[str, Any]] = [(f"[{i}]", v) for i, v in enumerate(args)]
    if kwargs:
        todo.extend((f"[{k!r}]", v) for k, v in kwargs.items())
    while todo:  # find it, for the message
        path, v = todo.pop()
        if type(v) is list:
            todo.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif type(v) is dict and all(type(k) is str for k in v):
            todo.extend((f"{path}[{k!r}]", x) for k, x in v.items())
        elif not json_exact([v]):
            raise TypeError(f"{what} {path} ({_short(v)}) is not JSON-serializable without "
                            "change: use lists, str-keyed dicts, str, finite numbers (or a "
                            "registered task and a secret: it then travels pickled)")


def _short(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


DEAD_LETTER_ERROR = "DeadLetteredError"
"""The error type a producer sees for every dead-lettered task, whatever the reason."""


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
