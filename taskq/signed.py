"""Signed pickled payloads and results: the format both sides share, and the producer's half.

:class:`Context` pickles a callable (cloudpickle: by reference when its
module is importable, by value for ``__main__``, lambdas and closures) and its data into
a payload the client puts in a *signed* envelope (message.py verifies the HMAC before a
byte of it is decoded). Results come back pickled too, in the outcome's ``x`` field with
their own HMAC in ``xs`` (over the task id and the base64 text), and the producer
verifies that before unpickling: nothing unsigned read from Redis is ever unpickled.

What travels by value keeps what a traceback needs: code objects keep their real
``co_filename`` (cloudpickle writes ``<dynamic-code>``) and carry the source lines of
their function, which the worker registers in its ``linecache`` as it unpickles them, so a
remote traceback shows the producer's file, line and source even where that file is not.

A class sent by value travels with its class attributes (cloudpickle's rule); if one of
them cannot be pickled (a lock, a pool, a connection: state of the producer's process),
the whole call is not refused: the class is sent again with that attribute replaced by a
stub that raises ``AttributeError`` naming it, as a ``spawn`` child that re-imported the
class would not have it either. Instances and arguments are never filtered: an
unpicklable argument still fails its call.

The function cache holds callables weakly (a bound method's object is freed when the
caller drops it) and boundedly.

The node's half (running a verified payload in its Pool's namespace) is
:mod:`taskq.node.signed_runner`.
"""

from __future__ import annotations

import base64
import functools
import io
import linecache
import pickle
import sys
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle

from taskq.errors import SignatureError, TaskError
from taskq.outcome import ChunkResult
from taskq.signing import result_verifies

CALL, MAP, STARMAP = 0, 1, 2
VERSION = 1
PROTOCOL = 5
MAX_FUNCTIONS = 64
MAX_SOURCE_CHARS = 64 * 1024  # source lines one payload carries (beyond: file and line only)


class RemoteTraceback(Exception):
    """The traceback text of an exception raised on a worker (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus: functions of the ``by_value`` modules are pickled by value, code
    keeps its file name and carries its source lines, and (``lenient``) unpicklable
    class attributes of by-value classes are replaced by stubs."""

    def __init__(self, file: io.BytesIO, by_value: frozenset[str], lenient: bool = False) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._by_value = by_value
        self._lenient = lenient
        self._lines_sent: dict[str, list[tuple[int, int]]] = {}
        self._source_left = MAX_SOURCE_CHARS

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            return self._code_reduce(obj)
        if (self._by_value and isinstance(obj, types.FunctionType)
                and obj.__module__ in self._by_value and hasattr(self, "_dynamic_function_reduce")):
            return self._dynamic_function_reduce(obj)
        reduced = super().reducer_override(obj)
        if self._lenient and isinstance(obj, type) and _is_class_state(reduced):
            clsdict, slots = reduced[2]
            reduced = (*reduced[:2], (self._sendable(obj, clsdict), slots), *reduced[3:])
        return reduced

    def _code_reduce(self, code: types.CodeType) -> Any:
        ctor, args = _cloudpickle._code_reduce(code)
        args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
        return _make_code, (ctor, args, self._source_of(code))

    def _source_of(self, code: types.CodeType) -> tuple[str, int, list[str]] | None:
        """The producer's source lines of ``code`` (None if unknown, or already sent in
        this payload with an enclosing function's)."""
        filename, first = code.co_filename, code.co_firstlineno
        last = max((line for _, _, line in code.co_lines() if line is not None), default=first)
        sent = self._lines_sent.setdefault(filename, [])
        if any(a <= first and last <= b for a, b in sent):
            return None
        lines = linecache.getlines(filename)[first - 1:last]
        size = sum(map(len, lines))
        if not lines or size > self._source_left:
            return None
        self._source_left -= size
        sent.append((first, last))
        return filename, first, lines

    def _sendable(self, cls: type, clsdict: dict[str, Any]) -> dict[str, Any]:
        """``clsdict`` with each data attribute that cannot be pickled replaced by a stub."""
        out = dict(clsdict)
        for key, value in clsdict.items():
            if isinstance(value, _NEVER_TRIED):
                continue
            try:
                _Pickler(io.BytesIO(), self._by_value).dump(value)
            except Exception as exc:
                out[key] = Unsent(f"{cls.__qualname__}.{key}", f"{exc}")
        return out


# Class attributes never trial-pickled: code travels on its own terms (a method that needs
# something unpicklable fails the call, as it must), and these always pickle.
_NEVER_TRIED = (types.FunctionType, classmethod, staticmethod, property, type, int, float,
                complex, str, bytes, bool, type(None))


def _is_class_state(reduced: Any) -> bool:
    """Whether ``reduced`` is cloudpickle's by-value class reduction (state: clsdict, slots)."""
    return (isinstance(reduced, tuple) and len(reduced) == 6 and isinstance(reduced[2], tuple)
            and len(reduced[2]) == 2 and isinstance(reduced[2][0], dict))


class Unsent:
    """A by-value class's attribute that could not be pickled (a lock...): reading it on the
    worker raises ``AttributeError`` with the reason, instead of the whole call failing."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return Unsent, (self.name, self.reason)

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        raise AttributeError(f"{self.name} was not sent to the worker: {self.reason} "
                             "(class attributes of a class sent by value must pickle)")


def _make_code(ctor: Any, args: tuple[Any, ...],
               source: tuple[str, int, list[str]] | None) -> types.CodeType:
    """Unpickling a code object: rebuild it and register its source lines (the worker may
    not have the file) in ``linecache`` under its real name, over whatever is there."""
    if source is not None:
        filename, first, lines = source
        known = list(linecache.getlines(filename))
        known += ["\n"] * (first - 1 + len(lines) - len(known))
        known[first - 1:first - 1 + len(lines)] = lines
        # mtime None: checkcache() never drops it (the way entries of a __loader__ stay)
        linecache.cache[filename] = (sum(map(len, known)), None, known, filename)
    code: types.CodeType = ctor(*args)
    return code


def dumps(obj: Any, by_value: frozenset[str] = frozenset()) -> bytes:
    """``obj`` pickled; if that fails, once more with unpicklable class attributes of
    by-value classes stubbed (see the module's docstring). Raises if it still fails."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, by_value).dump(obj)
    except Exception:
        buf = io.BytesIO()
        _Pickler(buf, by_value, lenient=True).dump(obj)
    return buf.getvalue()


# -- producer side ------------------------------------------------------------------------


class Context:
    """The pickling context of one Pool/Executor/Client: its namespace on the workers,
    its initializer, and a cache of pickled callables."""

    def __init__(self, namespace: str, initializer: Callable[..., object] | None = None,
                 initargs: Sequence[Any] = (), max_tasks: int | None = None) -> None:
        self.namespace = namespace
        self.max_tasks = max_tasks
        by_value: set[str] = set()
        if initializer is not None:
            module = getattr(initializer, "__module__", None)
            if isinstance(module, str) and module != "__main__" and _is_user_module(module):
                by_value.add(module)  # its globals must be per-Pool too, not shared per process
        self.by_value = frozenset(by_value)
        self.init_blob = (dumps((initializer, tuple(initargs)), self.by_value)
                          if initializer is not None else None)
        self._functions: OrderedDict[int, tuple[weakref.ref[Any], bytes]] = OrderedDict()
        self._dead: list[int] = []  # ids whose callable was freed: dropped at the next call
        self._lock = threading.Lock()

    def function_blob(self, fn: Callable[..., Any]) -> bytes:
        """``fn`` pickled (cached while ``fn`` lives: repeated calls of one function cost
        nothing, and the cache never keeps ``fn``, or a bound method's object, alive)."""
        key = id(fn)
        with self._lock:
            while self._dead:
                dead = self._dead.pop()
                hit = self._functions.get(dead)
                if hit is not None and hit[0]() is None:
                    del self._functions[dead]
            hit = self._functions.get(key)
            if hit is not None and hit[0]() is fn:
                self._functions.move_to_end(key)
                return hit[1]
        blob = dumps(fn, self.by_value)
        try:  # the callback only notes the id: it may run in any thread, inside this lock
            ref = weakref.ref(fn, functools.partial(_note_dead, self._dead, key))
        except TypeError:  # not weakly referenceable (a builtin): cheap to pickle again
            return blob
        with self._lock:
            self._functions[key] = (ref, blob)
            if len(self._functions) > MAX_FUNCTIONS:
                self._functions.popitem(last=False)
        return blob

    def payload(self, fn: Callable[..., Any], mode: int, data: Any) -> bytes:
        """The ``p`` bytes: for CALL ``data`` is ``(args, kwargs)``, for MAP a list of
        items, for STARMAP a list of argument tuples. Raises if anything is unpicklable."""
        opts = {"mt": self.max_tasks} if self.max_tasks else {}
        return pickle.dumps((VERSION, self.namespace, self.init_blob, self.function_blob(fn),
                             mode, dumps(data, self.by_value), opts), PROTOCOL)


def _note_dead(dead: list[int], key: int, _ref: object) -> None:
    dead.append(key)  # list.append is atomic: no lock needed in a weakref callback


def _is_user_module(name: str) -> bool:
    """A module of the user's project (not the standard library or an installed package)."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return not any(part in path for part in ("site-packages", "dist-packages")) and not path.startswith(
        (sys.base_prefix, sys.prefix))


def label(fn: Any) -> str:
    """A readable task name for ``taskq info`` and dead letters (never imported)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"pickled:{getattr(target, '__module__', '?')}.{name}"


def load_outcome(obj: dict[str, Any], secret: bytes | None) -> tuple[bool, Any]:
    """A pickled outcome from the inbox → ``(ok, value or exception)``, verified first.
    A chunk's value is a :class:`taskq.message.ChunkResult`, as for a JSON chunk."""
    task_id, text, sig = obj.get("id"), obj.get("x"), obj.get("xs")
    if not isinstance(task_id, str) or not isinstance(text, str) or not isinstance(sig, str):
        return False, SignatureError("malformed pickled result")
    if secret is None:
        return False, SignatureError("pickled result but this client has no secret")
    raw = text.encode()
    if not result_verifies(secret, task_id, raw, sig.encode()):
        return False, SignatureError("result signature does not match this client's secret: refused")
    try:
        kind, body, duration = pickle.loads(base64.b64decode(raw))
        if kind == "value":
            return True, body
        if kind == "chunk":
            values, errs = body
            return True, ChunkResult(values, {i: _exception(e) for i, e in errs.items()}, duration)
        return False, _exception(body)
    except BaseException as exc:  # SystemExit while unpickling too: it fails this result only
        return False, TaskError(type(exc).__name__, f"cannot load the result: {exc!r}")


def _exception(packed: tuple[bytes | None, str, str, str]) -> BaseException:
    blob, type_name, message, tb = packed
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException:  # an exception that cannot be rebuilt here: its description
            exc = None
    if not isinstance(exc, BaseException):
        return TaskError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


