"""Signed pickled payloads and results: the format both sides share, and the producer's half.

:class:`Context` pickles a callable (cloudpickle: by reference when its
module is importable, by value for ``__main__``, lambdas and closures) and its data into
a payload the client puts in a *signed* envelope (message.py verifies the HMAC before a
byte of it is decoded). Results come back pickled too, in the outcome's ``x`` field with
their own HMAC in ``xs`` (over the task id and the base64 text), and the producer
verifies that before unpickling: nothing unsigned read from Redis is ever unpickled.

The node's half (running a verified payload in its Pool's namespace) is
:mod:`taskq.node.signed_runner`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import pickle
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from taskq.config import derive_key
from taskq.errors import SignatureError, TaskError
from taskq.message import ChunkResult

CALL, MAP, STARMAP = 0, 1, 2
VERSION = 1
PROTOCOL = 5
_RESULT_DOMAIN = b"taskq-result\x00"
MAX_FUNCTIONS = 64


class RemoteTraceback(Exception):
    """The traceback text of an exception raised on a worker (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus: functions of the ``by_value`` modules are pickled by value."""

    def __init__(self, file: io.BytesIO, by_value: frozenset[str]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._by_value = by_value

    def reducer_override(self, obj: Any) -> Any:
        if (self._by_value and isinstance(obj, types.FunctionType)
                and obj.__module__ in self._by_value and hasattr(self, "_dynamic_function_reduce")):
            return self._dynamic_function_reduce(obj)
        return super().reducer_override(obj)


def dumps(obj: Any, by_value: frozenset[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, by_value).dump(obj)
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
        self._functions: OrderedDict[int, tuple[Any, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def function_blob(self, fn: Callable[..., Any]) -> bytes:
        """``fn`` pickled (cached: repeated calls of one function cost nothing)."""
        with self._lock:
            hit = self._functions.get(id(fn))
            if hit is not None and hit[0] is fn:
                self._functions.move_to_end(id(fn))
                return hit[1]
        blob = dumps(fn, self.by_value)
        with self._lock:
            self._functions[id(fn)] = (fn, blob)
            if len(self._functions) > MAX_FUNCTIONS:
                self._functions.popitem(last=False)
        return blob

    def payload(self, fn: Callable[..., Any], mode: int, data: Any) -> bytes:
        """The ``p`` bytes: for CALL ``data`` is ``(args, kwargs)``, for MAP a list of
        items, for STARMAP a list of argument tuples. Raises if anything is unpicklable."""
        opts = {"mt": self.max_tasks} if self.max_tasks else {}
        return pickle.dumps((VERSION, self.namespace, self.init_blob, self.function_blob(fn),
                             mode, dumps(data, self.by_value), opts), PROTOCOL)


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


def result_signature(secret: bytes, task_id: str, text: bytes) -> str:
    """``xs``: the HMAC (result key) of a pickled result, bound to its task id."""
    return hmac.new(derive_key(secret, "results"), _RESULT_DOMAIN + task_id.encode() + b"\x00" + text,
                    hashlib.sha256).hexdigest()


def load_outcome(obj: dict[str, Any], secret: bytes | None) -> tuple[bool, Any]:
    """A pickled outcome from the inbox → ``(ok, value or exception)``, verified first.
    A chunk's value is a :class:`taskq.message.ChunkResult`, as for a JSON chunk."""
    task_id, text, sig = obj.get("id"), obj.get("x"), obj.get("xs")
    if not isinstance(task_id, str) or not isinstance(text, str) or not isinstance(sig, str):
        return False, SignatureError("malformed pickled result")
    if secret is None:
        return False, SignatureError("pickled result but this client has no secret")
    raw = text.encode()
    if not hmac.compare_digest(result_signature(secret, task_id, raw).encode(), sig.encode()):
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


