"""Shared state across processes and nodes: ``Value`` and ``Lock``, backed by Redis.

A naive Redis lock costs round trips per acquisition; ``with lock: counter.value += 1``
in a loop would be one slow network call after another. Instead a process *leases* a
lock: the first acquisition takes it in Redis (one script call), and the process keeps
the lease across its following acquisitions for as long as nobody else asks for it, so
those cost no round trip at all. Values read or written while a lock is held are cached
under that lease and written back when the lease goes (or after a short idle time).
It stays exact because the lease is exclusive: nobody else can hold the lock, hence
touch those values under it, until the write-back and the hand-over happen in one
atomic script.

Hand-over is fair (FIFO): a process that wants a leased lock queues its token
(``…:queue``), tells the owner (``taskq:{shared}:req:<owner>``) and blocks on its own
grant list. The owner's agent thread sees the request; the lease is released at once if
the lock is not held, else at the holder's next ``release()``; the release script gives
the lock directly to the first live waiter. Leases expire unless renewed (a dead owner
frees the lock after ``LEASE`` seconds) and waiters that stop polling are skipped.

This module is the user-facing half (``Lock``, ``Value``); the lease protocol, the cache
and the agent thread are :mod:`taskq.compat.leases`.

Use a Value under one lock consistently (or through ``increment``): like any lock, it
only protects what is always accessed under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from taskq.compat import leases
from taskq.compat.leases import PREFIX, LeaseLostError
from taskq.errors import TaskqError

__all__ = ["LeaseLostError", "Lock", "Value"]


def _default_url() -> str:
    from taskq.compat.process import default_backend

    return default_backend().client.url


class Lock:
    """A lock shared by every process and node that uses the same Redis (and name)."""

    def __init__(self, name: str | None = None, *, url: str | None = None) -> None:
        self.name = name or os.urandom(8).hex()
        self.url = url or _default_url()
        self._lease = leases.lease_for(self.url, self.name)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return self._lease.acquire(block, timeout)

    def release(self) -> None:
        self._lease.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Callable[..., Lock], tuple[str, str]]:
        return (Lock._attach, (self.name, self.url))

    @staticmethod
    def _attach(name: str, url: str) -> Lock:
        return Lock(name, url=url)

    def __repr__(self) -> str:
        return f"<taskq.Lock {self.name!r}>"


_TYPES: dict[str, type] = {**dict.fromkeys("bBhHiIlLqQ", int), "f": float, "d": float,
                           "?": bool}


class Value:
    """``multiprocessing.Value`` in Redis: ``.value``, ``get_lock()``, atomic ``increment``.

    A ``name`` attaches to (or creates) a named value; without one the value is new and
    expires ``ttl`` seconds after creation (default a day) so it never leaks.
    """

    def __init__(self, typecode_or_type: str | type, *args: Any, lock: bool | Lock = True,
                 name: str | None = None, url: str | None = None, ttl: float | None = 86400.0,
                 _attach: bool = False) -> None:
        code = typecode_or_type if isinstance(typecode_or_type, str) else {
            int: "q", float: "d", bool: "?"}.get(typecode_or_type, "")
        if code not in _TYPES:
            raise TypeError(f"unsupported Value type {typecode_or_type!r}: use a numeric typecode")
        self.typecode, self._type = code, _TYPES[code]
        self.name = name or os.urandom(8).hex()
        self.url = url or _default_url()
        self.key = f"{PREFIX}value:{self.name}"
        self._ckey = (self.url, self.key)
        self._lock: Lock | None = lock if isinstance(lock, Lock) else None
        self._has_lock = lock is not False
        if not _attach:
            init = self._type(args[0]) if args else self._type(0)
            ttl_ms = None if name is not None or ttl is None else leases.ms(ttl)
            leases.client_for(self.url).set(self.key, leases.encode(init), nx=name is not None,
                                            px=ttl_ms)

    def _decode(self, raw: Any) -> Any:
        if raw is None:
            raise TaskqError(f"shared value {self.name!r} does not exist (expired?)")
        return self._type(float(raw)) if self._type is not int else int(raw)

    def _leases(self) -> list[leases.Lease]:
        return [lease for lease in leases.held_leases() if lease.url == self.url]

    def _cache(self, entry: leases.Entry) -> None:
        leases.current().cache[self._ckey] = entry
        for lease in entry.leases:
            lease.cached.add(self._ckey)

    @property
    def value(self) -> Any:
        st = leases.current()
        entry = st.cache.get(self._ckey)
        if entry is not None:
            return entry.value
        held = self._leases()
        value = self._decode(leases.client_for(self.url).get(self.key))
        if held:  # cached until one of the held leases goes
            with st.wb:
                entry = st.cache.get(self._ckey)
                if entry is not None:
                    return entry.value
                self._cache(leases.Entry(value, False, held))
        return value

    @value.setter
    def value(self, value: Any) -> None:
        value = self._type(value)
        st = leases.current()
        with st.wb:
            entry = st.cache.get(self._ckey)
            if entry is None:
                held = self._leases()
                if held:
                    self._cache(entry := leases.Entry(value, True, held))
            if entry is not None:
                entry.value, entry.dirty = value, True
                for lease in entry.leases:
                    lease.dirty = True
                return
        leases.client_for(self.url).set(self.key, leases.encode(value), keepttl=True)

    def increment(self, n: int | float = 1) -> Any:
        """Add ``n`` atomically (even without a lock); returns the new value."""
        st = leases.current()
        with st.wb:
            if st.cache.get(self._ckey) is not None or self._leases():
                self.value = new = self.value + n
                return new
        r = leases.client_for(self.url)
        if self._type is int:
            return int(r.incrby(self.key, int(n)))
        return self._type(r.incrbyfloat(self.key, float(n)))

    def get_lock(self) -> Lock:
        if self._lock is None:
            self._lock = Lock(f"value:{self.name}", url=self.url)
        return self._lock

    def get_obj(self) -> Value:
        return self

    def __reduce__(self) -> tuple[Callable[..., Value], tuple[Any, ...]]:
        lock = self.get_lock() if self._has_lock else False
        return (_attach_value, (self.typecode, self.name, self.url, lock))

    def __repr__(self) -> str:
        return f"<taskq.Value {self.typecode!r} {self.name!r}>"


def _attach_value(typecode: str, name: str, url: str, lock: Lock | bool) -> Value:
    return Value(typecode, lock=lock, name=name, url=url, _attach=True)
