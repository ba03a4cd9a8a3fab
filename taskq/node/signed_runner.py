"""Runs verified signed payloads (arbitrary callables, pickled arguments) in a pool
process, each in its own Pool's namespace.

Only reached after :func:`taskq.message.decode` has verified the envelope's HMAC. Each
Pool (or Executor, or Client) has a *namespace* here: the by-value functions of one Pool
are rebuilt against one per-Pool, per-module globals dict, the way ``multiprocessing``'s
spawn re-imports the main script as ``__mp_main__``. So a Pool's initializer that sets a
module global is seen by that Pool's tasks, and two Pools' initializers never clash. The
initializer runs in a process before its first task of that Pool (and again in a
replacement process, or after ``maxtasksperchild`` tasks). Results go back pickled and
signed (:func:`taskq.signing.result_signature`).

What to do with a failure (retry or fail) is not decided here: :func:`run` hands the
exception back to :mod:`taskq.node.runner`, which applies the one rule for every task.
"""

from __future__ import annotations

import base64
import builtins
import functools
import itertools
import pickle
import sys
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import orjson

from taskq import registry
from taskq.errors import SignatureError
from taskq.node.child import arm_timeout
from taskq.outcome import describe_exception
from taskq.signed import CALL, MAX_FUNCTIONS, PROTOCOL, STARMAP, VERSION, dumps
from taskq.signing import result_signature

MAX_NAMESPACES = 32


def _pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """The exception pickled (if it round-trips) beside its description."""
    try:
        data = dumps(exc)
        pickle.loads(data)  # exceptions with odd __init__s pickle but do not load
        blob: bytes | None = data
    except Exception:
        blob = None
    return (blob, *describe_exception(exc))


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
            if len(self.functions) > MAX_FUNCTIONS:
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
        if len(_namespaces) > MAX_NAMESPACES:
            _namespaces.popitem(last=False)
    _namespaces.move_to_end(name)
    ns.tasks += 1
    return ns


def _run_chunk(fn: Callable[..., Any], items: list[Any], star: bool,
               limit: float | None) -> tuple[list[Any], dict[int, Any]]:
    """Each item succeeds or fails on its own (an Exception or SystemExit fails just that
    item). With no time limit the loop runs in C while none fails; with one, each item
    is armed on its own (a slower Python loop, only then)."""
    values: list[Any] = []
    errors: dict[int, Any] = {}
    if limit is not None:
        for item in items:
            try:
                arm_timeout(limit)
                values.append(fn(*item) if star else fn(item))
            except (Exception, SystemExit) as exc:
                errors[len(values)] = _pack_exception(exc)
                values.append(None)
            finally:
                arm_timeout(None)
        return values, errors
    it = iter(items)
    calls = itertools.starmap(fn, it) if star else map(fn, it)
    while True:
        try:
            values.extend(calls)
            return values, errors
        except (Exception, SystemExit) as exc:  # sys.exit() in a task fails that item
            errors[len(values)] = _pack_exception(exc)
            values.append(None)


class Ran(NamedTuple):
    """What :func:`run` did: ``ok``, the outcome JSON (a signed pickled result) and, if
    the call raised as a whole, its exception (for the runner's retry decision; None
    when only the result could not be pickled). A chunk whose items failed is ok."""

    ok: bool
    outcome: bytes
    error: BaseException | None


def _call(fn: Callable[..., Any], args: Any, kwargs: Any, limit: float | None) -> Any:
    try:
        arm_timeout(limit)
        return fn(*args, **kwargs)
    finally:
        arm_timeout(None)


def run(task_id: str, payload: bytes, secret: bytes | None, limit: float | None = None) -> Ran:
    """Run a verified payload under the time limit ``limit`` (seconds, per item for a
    chunk); its outcome carries a signed pickled result."""
    t0 = time.perf_counter()
    result: tuple[str, Any, float]
    error: BaseException | None = None
    try:
        version, name, init_blob, fn_blob, mode, data_blob, opts = pickle.loads(payload)
        if version != VERSION:
            raise ValueError(f"unsupported payload version {version}")
        ns = _namespace(name, init_blob, opts.get("mt"))
        fn = ns.function(fn_blob)
        data = pickle.loads(data_blob)
        if mode == CALL:
            result = ("value", _call(fn, data[0], data[1], limit), 0.0)
        else:
            result = ("chunk", _run_chunk(fn, data, mode == STARMAP, limit), 0.0)
    except (Exception, SystemExit) as exc:
        error, result = exc, ("error", _pack_exception(exc), 0.0)
    finally:
        registry.run_after_task_hooks()
    result = (result[0], result[1], time.perf_counter() - t0)
    ok = error is None
    try:
        try:  # the C pickler first: it refuses (not mis-pickles) what needs cloudpickle
            blob = pickle.dumps(result, PROTOCOL)
        except Exception:
            blob = dumps(result)
    except (Exception, SystemExit) as exc:  # cannot be pickled: a failure, not a retry
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
    return Ran(ok, orjson.dumps(outcome), error)
