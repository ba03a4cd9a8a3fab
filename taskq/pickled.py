"""Signed pickled payloads: arbitrary callables and arguments, both ways.

Producer side: :class:`Context` pickles a callable (cloudpickle: by reference when its
module is importable, by value for ``__main__``, lambdas and closures) and its data into
a payload the client puts in a *signed* envelope (message.py verifies the HMAC before a
byte of it is decoded). Results come back pickled too, in the outcome's ``x`` field with
their own HMAC in ``xs`` (over the task id and the base64 text), and the producer
verifies that before unpickling: nothing unsigned read from Redis is ever unpickled.

Worker side: :func:`run` executes a verified payload in a pool process. Each Pool (or
Executor, or Client) has a *namespace* there: the by-value functions of one Pool are
rebuilt against one per-Pool, per-module globals dict, the way ``multiprocessing``'s
spawn re-imports the main script as ``__mp_main__``. So a Pool's initializer that sets a
module global is seen by that Pool's tasks, and two Pools' initializers never clash. The
initializer runs in a process before its first task of that Pool (and again in a
replacement process, or after ``maxtasksperchild`` tasks).
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import hmac
import io
import itertools
import pickle
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle
import orjson

from taskq.errors import SignatureError, TaskError

CALL, MAP, STARMAP = 0, 1, 2
_VERSION = 1
_P = 5
_RESULT_DOMAIN = b"taskq-result\x00"
_MAX_NAMESPACES = 32
_MAX_FUNCTIONS = 64


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
        super().__init__(file, protocol=_P)
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
            if len(self._functions) > _MAX_FUNCTIONS:
                self._functions.popitem(last=False)
        return blob

    def payload(self, fn: Callable[..., Any], mode: int, data: Any) -> bytes:
        """The ``p`` bytes: for CALL ``data`` is ``(args, kwargs)``, for MAP a list of
        items, for STARMAP a list of argument tuples. Raises if anything is unpicklable."""
        opts = {"mt": self.max_tasks} if self.max_tasks else {}
        return pickle.dumps((_VERSION, self.namespace, self.init_blob, self.function_blob(fn),
                             mode, dumps(data, self.by_value), opts), _P)


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


class ChunkResult:
    """The results of one chunk: ``values`` in order, ``errors`` by index."""

    __slots__ = ("duration", "errors", "values")

    def __init__(self, values: list[Any], errors: dict[int, BaseException], duration: float) -> None:
        self.values, self.errors, self.duration = values, errors, duration

    def __iter__(self) -> Iterator[tuple[bool, Any]]:
        errors = self.errors
        for i, v in enumerate(self.values):
            e = errors.get(i) if errors else None
            yield (True, v) if e is None else (False, e)


def result_signature(secret: bytes, task_id: str, text: bytes) -> str:
    return hmac.new(secret, _RESULT_DOMAIN + task_id.encode() + b"\x00" + text,
                    hashlib.sha256).hexdigest()


def load_outcome(obj: dict[str, Any], secret: bytes | None) -> tuple[bool, Any]:
    """A pickled outcome from the inbox → ``(ok, value or exception)``, verified first."""
    task_id, text, sig = obj.get("id"), obj.get("x"), obj.get("xs")
    if not isinstance(task_id, str) or not isinstance(text, str) or not isinstance(sig, str):
        return False, SignatureError("malformed pickled result")
    if secret is None:
        return False, SignatureError("pickled result but this client has no secret")
    raw = text.encode()
    if not hmac.compare_digest(result_signature(secret, task_id, raw), sig):
        return False, SignatureError("result signature does not match this client's secret: refused")
    try:
        kind, body, duration = pickle.loads(base64.b64decode(raw))
        if kind == "value":
            return True, body
        if kind == "chunk":
            values, errs = body
            return True, ChunkResult(values, {i: _exception(e) for i, e in errs.items()}, duration)
        return False, _exception(body)
    except Exception as exc:
        return False, TaskError(type(exc).__name__, f"cannot load the result: {exc}")


def _exception(packed: tuple[bytes | None, str, str, str]) -> BaseException:
    blob, type_name, message, tb = packed
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        return TaskError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


# -- worker side --------------------------------------------------------------------------


def _pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = "".join(traceback.format_exception(exc))
    try:
        data = dumps(exc)
        pickle.loads(data)  # exceptions with odd __init__s pickle but do not load
        blob: bytes | None = data
    except Exception:
        blob = None
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    return blob, name, message, tb


def _clone(fn: types.FunctionType, ns: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__, new.__module__, new.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    new.__annotations__ = fn.__annotations__
    new.__dict__.update(fn.__dict__)
    return new


class _Namespace:
    """One Pool's state in one pool process: per-module globals, loaded functions."""

    def __init__(self) -> None:
        self.modules: dict[str, dict[str, Any]] = {}
        self.functions: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()
        self.tasks = 0

    def rebind(self, obj: Any) -> Any:
        """Point a by-value function (and its by-value siblings) at this namespace."""
        if isinstance(obj, functools.partial):
            return functools.partial(self.rebind(obj.func), *obj.args, **obj.keywords)
        if not isinstance(obj, types.FunctionType):
            return obj
        g = obj.__globals__
        module = sys.modules.get(obj.__module__)
        if module is not None and getattr(module, "__dict__", None) is g:
            return obj  # pickled by reference: the real module's globals
        name = g.get("__name__") or obj.__module__ or "__main__"
        ns = self.modules.get(name)
        if ns is None:
            ns = self.modules[name] = {"__builtins__": builtins}
        clones = {id(v): _clone(v, ns) for v in g.values()
                  if isinstance(v, types.FunctionType) and v.__globals__ is g}
        for key, value in g.items():
            if key not in ns:  # first seen wins: an initializer's assignment is never undone
                ns[key] = clones.get(id(value), value)
        return clones.get(id(obj)) or _clone(obj, ns)

    def function(self, blob: bytes) -> Callable[..., Any]:
        fn = self.functions.get(blob)
        if fn is None:
            fn = self.rebind(pickle.loads(blob))
            self.functions[blob] = fn
            if len(self.functions) > _MAX_FUNCTIONS:
                self.functions.popitem(last=False)
        return fn


_namespaces: OrderedDict[str, _Namespace] = OrderedDict()


def _namespace(name: str, init_blob: bytes | None, max_tasks: int | None) -> _Namespace:
    ns = _namespaces.get(name)
    if ns is not None and max_tasks and ns.tasks >= max_tasks:
        del _namespaces[name]  # maxtasksperchild: a fresh "process" for this Pool
        ns = None
    if ns is None:
        ns = _Namespace()
        if init_blob is not None:
            try:
                initializer, initargs = pickle.loads(init_blob)
                ns.rebind(initializer)(*initargs)
            except Exception as exc:
                raise BrokenProcessPool(f"the pool initializer failed: {exc!r}") from exc
        _namespaces[name] = ns
        if len(_namespaces) > _MAX_NAMESPACES:
            _namespaces.popitem(last=False)
    _namespaces.move_to_end(name)
    ns.tasks += 1
    return ns


def _run_chunk(fn: Callable[..., Any], items: list[Any], star: bool) -> tuple[list[Any], dict[int, Any]]:
    """Each item succeeds or fails on its own; the loop itself runs in C while none fails."""
    values: list[Any] = []
    errors: dict[int, Any] = {}
    it = iter(items)
    calls = itertools.starmap(fn, it) if star else map(fn, it)
    while True:
        try:
            values.extend(calls)
            return values, errors
        except (Exception, SystemExit) as exc:  # sys.exit() in a task fails that item
            errors[len(values)] = _pack_exception(exc)
            values.append(None)


def run(task_id: str, payload: bytes, secret: bytes | None) -> tuple[bool, bytes]:
    """Run a verified payload; returns ``(ok, outcome JSON)`` with a signed pickled result."""
    t0 = time.perf_counter()
    result: tuple[str, Any, float]
    ok = True
    try:
        version, name, init_blob, fn_blob, mode, data_blob, opts = pickle.loads(payload)
        if version != _VERSION:
            raise ValueError(f"unsupported payload version {version}")
        ns = _namespace(name, init_blob, opts.get("mt"))
        fn = ns.function(fn_blob)
        data = pickle.loads(data_blob)
        if mode == CALL:
            args, kwargs = data
            result = ("value", fn(*args, **kwargs), 0.0)
        else:
            result = ("chunk", _run_chunk(fn, data, mode == STARMAP), 0.0)
    except (Exception, SystemExit) as exc:
        ok, result = False, ("error", _pack_exception(exc), 0.0)
    finally:
        _release_shared_state()
    result = (result[0], result[1], time.perf_counter() - t0)
    try:
        try:  # the C pickler first: it refuses (not mis-pickles) what needs cloudpickle
            blob = pickle.dumps(result, _P)
        except Exception:
            blob = dumps(result)
    except Exception as exc:
        ok, result = False, ("error", _pack_exception(exc), result[2])
        blob = dumps(result)
    if secret is None:  # cannot happen: the payload was verified with it
        raise SignatureError("no secret to sign the result with")
    text = base64.b64encode(blob)
    outcome: dict[str, Any] = {"id": task_id, "ok": ok, "x": text.decode(),
                               "xs": result_signature(secret, task_id, text)}
    if not ok:
        _, type_name, message, tb = result[1]
        outcome["e"] = [type_name, message, tb]
    return ok, orjson.dumps(outcome)


def _release_shared_state() -> None:
    """Hand back Redis locks this process still leases (and write back cached values)."""
    shared = sys.modules.get("taskq.shared")
    if shared is not None:
        shared.release_all()
