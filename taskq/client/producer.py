"""What every producer (:class:`~taskq.client.client.Client` and
:class:`~taskq.client.aio.AsyncClient`) is before any I/O: its settings (from its
arguments, else ``TASKQ_*``), queue and client id, and the one way a call becomes a
:class:`~taskq.message.TaskMessage` (task ids, reply inbox, pickling context, map
chunks). How a call travels is decided in :mod:`taskq.client.calls`; the clients add
only their connections and I/O.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from taskq.client import calls
from taskq.client.calls import DEFAULT, CallOptions, TaskRef
from taskq.config import Settings
from taskq.message import TaskMessage
from taskq.signing import SIGNED_TTL

if TYPE_CHECKING:
    from taskq.signed import Context

FIRE_AND_FORGET = CallOptions(reply=False, keep_result=False)
"""The options of ``send``: no reply, no stored result."""


class Producer:
    """Settings, queue, client id and message building, shared by both clients: a client
    is made with ``(url=None, *, queue=None, result_ttl=None, secret=None,
    settings=None)`` (``settings`` wins over the others, which win over ``TASKQ_*``) and
    adds its I/O in :meth:`_setup`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        queue: str | None = None,
        result_ttl: float | None = None,
        secret: bytes | str | None = None,
        settings: Settings | None = None,
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self.settings = settings or Settings.from_env(
            url=url, queues=(queue,) if queue else None, result_ttl=result_ttl, secret=secret
        )
        self.url = self.settings.url
        self.queue = self.settings.queues[0]
        self.client_id = os.urandom(8).hex()
        self.message_ttl = SIGNED_TTL
        """Seconds a signed envelope stays runnable (``exp``): a node dead-letters it later."""
        self._ids = itertools.count()
        self._context: Context | None = None  # made on the first call that travels pickled
        self._setup()

    def _setup(self) -> None:
        """The client's own connections and state, made once the settings are known."""

    def message(
        self, fn: TaskRef, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
        chunk: bool = False, star: bool = True, context: Context | None = None,
        options: CallOptions = DEFAULT,
    ) -> TaskMessage:
        """The message for ``fn(*args, **kwargs)`` (or, with ``chunk``, for one call per
        item of ``args``: argument tuples if ``star``, else single arguments), travelling
        as :func:`taskq.client.calls.route` decides; ``context`` is the pickling context
        (namespace, initializer) if it travels pickled, else this client's own. Send it
        with the client's ``submit_message``. Raises SignatureError if it must travel
        pickled and there is no secret, TypeError for arguments a registered task cannot
        take."""
        # Positional calls: this is the submit hot path.
        pickled, spec = calls.route(fn, args, kwargs, chunk, star, self.settings.secret is not None)
        msg_id = options.task_id or self.new_id()
        reply_to = self.client_id if options.reply else None
        if not pickled:
            return calls.by_name(spec, fn, args, kwargs, msg_id, reply_to, options, chunk, star)
        assert not isinstance(fn, str)
        return calls.pickled(spec, fn, args, kwargs, msg_id, reply_to, options, chunk, star,
                             context if context is not None else self._pickling_context())

    def new_id(self) -> str:
        """A task id of this client's own: unique (client id and a counter)."""
        return f"{self.client_id}-{next(self._ids)}"

    def _pickling_context(self) -> Context:
        if self._context is None:
            from taskq import signed

            self._context = signed.Context(self.client_id)
        return self._context


def check_positive(name: str, value: Any) -> None:
    """As the stdlib's map: a chunk size (or window) below 1 is an error, never 0 calls."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def map_chunks(iterables: Sequence[Iterable[Any]], chunksize: int) -> list[list[tuple[Any, ...]]]:
    """``map``'s argument tuples (up to the shortest iterable) in chunks of ``chunksize``;
    ValueError for a chunk size below 1."""
    check_positive("chunksize", chunksize)
    items = list(zip(*iterables))  # noqa: B905 - stops at the shortest, like map()
    return [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
