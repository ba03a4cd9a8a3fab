"""How a call travels, and its options: the one place that decides (:func:`route`) and
builds the :class:`~taskq.message.TaskMessage` for either way (:func:`by_name`,
:func:`pickled`).

The rule, for ``fn(*args, **kwargs)`` (or a map chunk: many calls of ``fn``):

1. a task given by name (a ``str``) travels by name (JSON);
2. a callable that is not a registered ``@task`` travels pickled;
3. a registered task whose arguments JSON would not carry faithfully (a tuple, a set,
   bytes, a dict with non-str keys, NaN, a 65-bit int...) travels pickled: never silently
   changed into something else;
4. a map chunk of a registered task travels pickled when a secret is at hand (one pickle
   per chunk is ~20x cheaper per item than JSON envelopes), else by name;
5. otherwise by name.

Travelling pickled needs the shared secret (a signed payload); without it rules 2 and 3
raise :class:`~taskq.errors.SignatureError` at the call, never on a worker.

Whichever way a call travels, its options mean the same (:class:`CallOptions`): the time
limit is the call's, else the registered task's; the retry policy is the registered
task's (a pickled registered task carries its registered name in the envelope's ``t``,
so nodes find its policy; an unregistered callable has none).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskq import registry
from taskq.errors import SignatureError
from taskq.message import TaskMessage
from taskq.outcome import json_exact

if TYPE_CHECKING:  # signed loads cloudpickle: imported only once a call travels pickled
    from taskq.signed import Context

TaskRef = Callable[..., Any] | str


def check_time_limit(value: Any) -> float | None:
    """A time limit is None or a positive, finite number of seconds (ValueError if not)."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or not math.isfinite(value)):
        raise ValueError(f"time limit must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The options of one call, meaning the same whichever way it travels.

    ``time_limit`` overrides the registered task's (seconds; the task gets
    TaskTimeoutError, and its process is killed a grace period later); ``keep_result``
    stores the outcome in Redis for ``Client.result``; ``reply`` pushes it to this
    client (a Future resolves); ``batch`` counts the call in a batch; ``task_id`` is an
    explicit id (else the client makes one).

    ``delay`` (seconds) or ``eta`` (a datetime; naive means UTC) hold the task in the
    queue's delayed set until then. ``dedup_key`` makes the call collapse onto a task
    with that key that is queued or running (or finished less than ``dedup_ttl``
    seconds ago); such a call always keeps its result (other producers read it).
    """

    time_limit: float | None = None
    keep_result: bool = True
    reply: bool = True
    batch: str | None = None
    task_id: str | None = None
    delay: float | None = None
    eta: datetime | None = None
    dedup_key: str | None = None
    dedup_ttl: float | None = None

    def __post_init__(self) -> None:
        if self.time_limit is not None:
            object.__setattr__(self, "time_limit", check_time_limit(self.time_limit))
        if self.delay is not None or self.eta is not None:
            if self.delay is not None and self.eta is not None:
                raise TypeError("apply() takes delay or eta, not both")
            if self.delay is not None:
                object.__setattr__(self, "delay", check_seconds("delay", self.delay, zero=True))
            elif not isinstance(self.eta, datetime):
                raise TypeError(f"eta must be a datetime, got {self.eta!r}")
        if self.dedup_key is not None:
            if not isinstance(self.dedup_key, str) or not 0 < len(self.dedup_key) <= 200:
                raise ValueError(f"dedup_key must be a non-empty str of at most 200 "
                                 f"characters, got {self.dedup_key!r}")
            object.__setattr__(self, "keep_result", True)
        if self.dedup_ttl is not None:
            if self.dedup_key is None:
                raise TypeError("dedup_ttl needs a dedup_key")
            object.__setattr__(self, "dedup_ttl", check_seconds("dedup_ttl", self.dedup_ttl))

    def due(self, now: float) -> float | None:
        """When the call is due (unix seconds), or None to queue it now."""
        if self.delay is not None:
            return now + self.delay if self.delay > 0 else None
        if self.eta is not None:
            eta = self.eta if self.eta.tzinfo is not None else self.eta.replace(tzinfo=timezone.utc)
            at = eta.timestamp()
            return at if at > now else None
        return None


def check_seconds(name: str, value: Any, zero: bool = False) -> float:
    """A finite number of seconds, > 0 (or >= 0 with ``zero``); ValueError if not."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} number "
                         f"of seconds, got {value!r}")
    return float(value)


DEFAULT = CallOptions()
"""A plain call's options: shared, so the submit hot path builds none."""


Route = tuple[bool, registry.TaskSpec | None]
"""How a call travels: ``(pickled, spec)``, ``spec`` being the registered task it calls
(None for an unregistered callable, or a name this process does not know). A plain
tuple, not a NamedTuple: it is made on every submit, and that is ~5x cheaper."""


def registered(fn: Any) -> registry.TaskSpec | None:
    """The registered task of a callable (one decorated with ``@task``), else None."""
    name = getattr(fn, "__taskq_name__", None)
    return registry.find_task(name) if isinstance(name, str) else None


def route(fn: TaskRef, args: Sequence[Any], kwargs: dict[str, Any] | None,
          chunk: bool = False, star: bool = True, has_secret: bool = False) -> Route:
    """The rule of the module docstring. For a chunk, ``args`` are its items: argument
    tuples if ``star``, else single arguments. Raises SignatureError when the call must
    travel pickled and there is no secret."""
    if isinstance(fn, str):
        return False, registry.find_task(fn)
    spec = registered(fn)
    if spec is None:
        pickled = True
    elif chunk and has_secret:
        return True, spec
    else:
        pickled = not json_faithful(args, kwargs, chunk, star)
    if pickled and not has_secret:
        from taskq.signed import label

        raise SignatureError(
            f"{label(fn)[8:]} is not a registered task (or its arguments are not plain "
            "JSON): sending it pickled needs the shared secret TASKQ_SECRET, set here and "
            "on the worker nodes")
    return pickled, spec


def json_faithful(args: Sequence[Any], kwargs: dict[str, Any] | None, chunk: bool = False,
                  star: bool = True) -> bool:
    """Would these arguments come back from JSON exactly as they are
    (:func:`taskq.outcome.json_exact`)? A chunk's ``args`` are its items."""
    values: list[Any] = ([*itertools.chain.from_iterable(args)] if star else list(args)) \
        if chunk else list(args)
    if kwargs:
        values.extend(kwargs.values())
    return json_exact(values)


def pickled(spec: registry.TaskSpec | None, fn: Callable[..., Any], args: Sequence[Any],
            kwargs: dict[str, Any] | None, msg_id: str, reply_to: str | None,
            options: CallOptions, chunk: bool, star: bool, context: Context) -> TaskMessage:
    """The message of a call routed pickled: ``fn`` and its data in a payload pickled in
    ``context`` (the Pool's namespace and initializer, a cache of pickled functions); the
    envelope names the registered task (``spec``) if it is one, so nodes apply its retry
    policy, and carries its time limit (the call's, else the task's)."""
    from taskq import signed

    data: Any
    if not chunk:
        mode, data = signed.CALL, (tuple(args), kwargs or {})
    elif star:
        mode, data = signed.STARMAP, [tuple(a) for a in args]
    else:
        mode, data = signed.MAP, list(args)
    time_limit = options.time_limit
    if time_limit is None and spec is not None:
        time_limit = spec.timeout  # the producer knows it even if the node has not imported it
    return TaskMessage(
        id=msg_id, task=spec.name if spec is not None else signed.label(fn),
        payload=context.payload(fn, mode, data), reply_to=reply_to, batch=options.batch,
        keep_result=options.keep_result, timeout=time_limit, chunk=chunk,
    )


def by_name(spec: registry.TaskSpec | None, fn: TaskRef, args: Sequence[Any],
            kwargs: dict[str, Any] | None, msg_id: str, reply_to: str | None,
            options: CallOptions, chunk: bool, star: bool) -> TaskMessage:
    """The message of a call routed by name: JSON arguments, checked against the
    registered task's signature (if this process knows it) before anything is sent."""
    kwargs = kwargs or {}
    return by_name_template(fn, kwargs, reply_to, options, chunk, msg_id,
                            call_args(spec, args, kwargs, chunk, star))


def call_args(spec: registry.TaskSpec | None, args: Sequence[Any], kwargs: dict[str, Any],
              chunk: bool, star: bool) -> list[Any]:
    """The envelope's ``a`` of a call routed by name (for a chunk, one argument list per
    item), checked against the registered task's signature if this process knows it."""
    if chunk:
        calls = [list(a) for a in args] if star else [[a] for a in args]
        if spec is not None:
            for one in calls:
                registry.check_call(spec, one, kwargs)
        return calls
    calls = list(args)
    if spec is not None:
        registry.check_call(spec, calls, kwargs)
    return calls


def by_name_template(fn: TaskRef, kwargs: dict[str, Any], reply_to: str | None,
                     options: CallOptions, chunk: bool, msg_id: str = "",
                     args: list[Any] | None = None) -> TaskMessage:
    """The message of calls of ``fn`` routed by name with these options (the id and the
    arguments of one of them, if given). The node applies the registered time limit
    itself: only an override travels."""
    return TaskMessage(
        id=msg_id, task=fn if isinstance(fn, str) else registry.name_of(fn),
        args=args if args is not None else [], kwargs=kwargs, reply_to=reply_to,
        batch=options.batch, keep_result=options.keep_result, timeout=options.time_limit,
        chunk=chunk,
    )
