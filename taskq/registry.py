"""The task registry: ``@task`` and name → callable + options.

Workers only ever run functions found here by name. A module path read from Redis is
never imported: task modules are imported because the operator said so
(``taskq worker --import MODULE``), never because a message asked.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from taskq.errors import ConfigError, UnknownTaskError

F = TypeVar("F", bound=Callable[..., Any])

_SIMPLE_TYPES: tuple[type, ...] = (int, float, str, bool, list, dict)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task and the options its executions follow."""

    name: str
    fn: Callable[..., Any]
    timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    split_range: bool = False
    """CLI hint: the first two arguments are a half-open range ``start, end`` that
    ``taskq enqueue`` may split into chunks."""
    reduce: str | None = None
    """CLI hint: how to combine the results of a split range (only ``"sum"`` today)."""

    def retry_delay(self, attempt: int, jitter: float) -> float:
        """Exponential backoff with full jitter: attempt 1 → up to ``retry_backoff`` s."""
        cap: float = min(self.retry_backoff_max, self.retry_backoff * 2.0 ** (attempt - 1))
        return cap * (0.5 + jitter / 2)


_REGISTRY: dict[str, TaskSpec] = {}


@overload
def task(fn: F) -> F: ...
@overload
def task(
    fn: None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 300.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    split_range: bool = False,
    reduce: str | None = None,
) -> Callable[[F], F]: ...


def task(
    fn: F | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 300.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    split_range: bool = False,
    reduce: str | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a task; the function itself is returned unchanged.

    The name defaults to ``module.qualname``. ``timeout`` is the soft limit in seconds
    (the process is killed a grace period later); ``retries`` failed attempts are
    retried after exponential backoff with jitter when the exception is a ``retry_on``.
    """

    def register(f: F) -> F:
        task_name = name or f"{f.__module__}.{f.__qualname__}"
        if retries < 0:
            raise ConfigError(f"task {task_name}: retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"task {task_name}: timeout must be > 0")
        spec = TaskSpec(
            task_name, f, timeout, retries, retry_backoff, retry_backoff_max,
            tuple(retry_on), split_range, reduce,
        )
        existing = _REGISTRY.get(task_name)
        if existing is not None and _origin(existing.fn) != _origin(f):
            raise ConfigError(f"task name {task_name!r} is already registered by another function")
        _REGISTRY[task_name] = spec
        f.__taskq_name__ = task_name  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def _origin(f: Callable[..., Any]) -> tuple[str, str]:
    return (getattr(f, "__module__", ""), getattr(f, "__qualname__", ""))


def get_task(name: str) -> TaskSpec:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}") from None


def find_task(name: str) -> TaskSpec | None:
    _ensure_builtins()
    return _REGISTRY.get(name)


def task_names() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def name_of(fn: Callable[..., Any] | str) -> str:
    """The registered name of a task given by name or as its decorated function."""
    if isinstance(fn, str):
        return fn
    registered = getattr(fn, "__taskq_name__", None)
    if isinstance(registered, str):
        return registered
    raise UnknownTaskError(
        f"{getattr(fn, '__qualname__', fn)!r} is not a registered task: decorate it with @taskq.task"
    )


def import_task_modules(modules: typing.Iterable[str]) -> None:
    """Import the operator's task modules; an error becomes one clear line."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time failure of user code
            raise ConfigError(f"cannot import task module {module!r}: {exc}") from None


def resolve_callable(spec: str) -> Callable[..., Any]:
    """``module:function`` (or ``module.function``) → the function, for ``--init``."""
    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"cannot import {module!r}: {exc}") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{module!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable")
    return typing.cast(Callable[..., Any], obj)


@functools.lru_cache(maxsize=1024)
def _call_shape(fn: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, type]] | None:
    """A function's signature and its simply-typed parameters, computed once: producers
    check every call, and ``inspect``/``get_type_hints`` cost ~100 µs a time."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    simple = {
        name: hint for name, hint in hints.items()
        if hint in _SIMPLE_TYPES and name in sig.parameters
        and sig.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                               inspect.Parameter.VAR_KEYWORD)
    }
    return sig, simple


def check_call(spec: TaskSpec, args: typing.Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Fail early, on the producer, for a wrong argument count or a plainly wrong type.

    Only simple annotations (int, float, str, bool, list, dict) are checked; anything
    richer is the task's own business.
    """
    binding = _binding(spec.fn, len(args), tuple(kwargs))
    if binding is None:
        return
    if isinstance(binding, str):
        raise TypeError(f"{spec.name}{binding}")
    for pname, hint, where in binding:
        value = args[where] if isinstance(where, int) else kwargs[where]
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise TypeError(f"{spec.name}: argument {pname!r} must be {hint.__name__}, got {value!r}")


Binding = tuple[tuple[str, type, int | str], ...]
"""The simply-typed parameters a call binds: (name, type, its position or keyword)."""


@functools.lru_cache(maxsize=4096)
def _binding(fn: Callable[..., Any], nargs: int, kwnames: tuple[str, ...]) -> Binding | str | None:
    """How a call of ``fn`` with ``nargs`` positional arguments and these keywords binds,
    worked out once per shape (``Signature.bind`` costs several µs a call): the checks
    to make, the text of the TypeError if it cannot bind, or None if ``fn`` has no
    signature. Placeholders stand in for the values: a parameter bound to position ``i``
    gets ``i``, one bound by keyword gets its name."""
    shape = _call_shape(fn)
    if shape is None:
        return None
    sig, simple = shape
    try:
        bound = sig.bind(*range(nargs), **{k: k for k in kwnames})
    except TypeError as exc:
        return f"{sig}: {exc}"
    return tuple((pname, hint, bound.arguments[pname]) for pname, hint in simple.items()
                 if pname in bound.arguments)


_after_task: list[Callable[[], None]] = []


def after_each_task(hook: Callable[[], None]) -> None:
    """Run ``hook`` in a pool process after every signed task (taskq.Lock uses it to hand
    back leases a task still holds). Registered once per process by whoever needs it."""
    if hook not in _after_task:
        _after_task.append(hook)


def run_after_task_hooks() -> None:
    for hook in _after_task:
        hook()


_builtins_loaded = False
_builtins_enabled = True
BUILTINS_MODULE = "taskq.tasks"


def builtins_wanted(imports: typing.Collection[str]) -> bool:
    """Does a worker given these ``--import`` modules run the built-in demo tasks? Only
    with none (``taskq run``, the quickstart) or when ``taskq.tasks`` is one of them."""
    return not imports or BUILTINS_MODULE in imports


def use_builtins(enabled: bool) -> None:
    """Register the built-in demo tasks on demand (the default), or never: a production
    worker runs only what its operator imported (drops any already registered)."""
    global _builtins_enabled
    _builtins_enabled = enabled
    if not enabled:
        for name in [n for n, s in _REGISTRY.items() if s.fn.__module__ == BUILTINS_MODULE]:
            del _REGISTRY[name]


def _ensure_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded and _builtins_enabled:
        _builtins_loaded = True
        importlib.import_module(BUILTINS_MODULE)
