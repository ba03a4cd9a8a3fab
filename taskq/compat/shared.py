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

Use a Value under one lock consistently (or through ``increment``): like any lock, it
only protects what is always accessed under it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.commands.core import Script

from taskq import registry
from taskq.broker import SHARED_PREFIX, connect, load_script
from taskq.errors import TaskqError
from taskq.local import lifetime

PREFIX = SHARED_PREFIX
LEASE = 10.0  # seconds a lease lives without renewal
_POLL = 0.25  # a waiter re-checks (and proves it is alive) this often
_STALE = 3.0  # a waiter silent this long is skipped
_IDLE_WRITE_BACK = 0.05  # a lease not held this long writes its values back


class LeaseLostError(TaskqError):
    """A lock's lease expired while it was held (the process stalled for ``LEASE`` s)."""


class _State:
    """Per-process state, rebuilt after a fork."""

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-{os.urandom(6).hex()}"
        self.clients: dict[str, redis.Redis] = {}
        self.leases: dict[tuple[str, str], _Lease] = {}
        self.cache: dict[CacheKey, _Entry] = {}
        self.wb = threading.RLock()  # the cache, and write-backs from snapshot to Redis
        self.agents: dict[str, _Agent] = {}
        self.lock = threading.Lock()
        self.tls = threading.local()


CacheKey = tuple[str, str]  # (url, value key)


class _Entry:
    """A value cached in this process, valid while every lease held when it was loaded
    stays leased (the lock that protects it is one of them)."""

    __slots__ = ("dirty", "leases", "value")

    def __init__(self, value: Any, dirty: bool, leases: list[_Lease]) -> None:
        self.value, self.dirty, self.leases = value, dirty, leases


_state = _State()
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_state", _State()))


def _client(url: str) -> redis.Redis:
    client = _state.clients.get(url)
    if client is None:
        client = _state.clients[url] = connect(url, socket_timeout=30.0, socket_connect_timeout=5.0)
    return client


def _script(url: str, name: str) -> Script:
    return load_script(_client(url), __package__ or "taskq.compat", name)


def _held() -> list[_Lease]:
    stack = getattr(_state.tls, "held", None)
    if stack is None:
        stack = _state.tls.held = []
    return cast("list[_Lease]", stack)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class _Lease:
    """This process's side of one lock."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        base = f"{PREFIX}lock:{name}"
        self.keys = [base, base + ":queue", base + ":alive"]
        self.held = threading.Lock()  # held by a thread of this process
        self.io = threading.Lock()  # serializes this lease's Redis calls (holder vs agent)
        self.leased = False
        self.requested = False
        self.expires = 0.0  # monotonic time by which the lease must have been renewed
        self.last_used = 0.0
        self.cached: set[CacheKey] = set()  # cache entries that go when this lease goes
        self.dirty = False  # some of them may need writing back
        self._acquire, self._release, self._keep = (
            _script(url, "lock_acquire"), _script(url, "lock_release"), _script(url, "lock_keep"))

    def acquire(self, block: bool, timeout: float | None) -> bool:
        if not self.held.acquire(block, -1 if timeout is None or not block else timeout):
            return False
        try:
            if self.leased and (self.requested or time.monotonic() > self.expires):
                self.hand_over()  # someone waits (or the lease is old): queue up behind them
            if not self.leased and not self._take(block, timeout):
                self.held.release()
                return False
        except BaseException:
            self.held.release()
            raise
        _held().append(self)
        return True

    def release(self) -> None:
        if not self.held.locked():
            raise ValueError("lock released too many times")
        stack = _held()
        if self in stack:
            stack.remove(self)
        self.last_used = time.monotonic()
        try:
            if self.requested or self.last_used > self.expires:
                self.hand_over()
        finally:
            self.held.release()

    def _take(self, block: bool, timeout: float | None) -> bool:
        r = _client(self.url)
        token = _state.token
        end = None if timeout is None or not block else time.monotonic() + timeout
        grant = f"{PREFIX}grant:{token}"
        while True:
            now = time.monotonic()
            got, owner = self._acquire(keys=self.keys, args=[token, _ms(time.time()), _ms(_STALE),
                                                             _ms(LEASE)])
            if got == 1:
                self.leased, self.requested = True, False
                self.expires = now + LEASE / 2
                _agent(self.url)
                return True
            if owner:
                pipe = r.pipeline(transaction=False)
                pipe.lpush(f"{PREFIX}req:{owner.decode()}", self.name)
                pipe.pexpire(f"{PREFIX}req:{owner.decode()}", _ms(LEASE))
                pipe.execute()
            left = _POLL if end is None else min(_POLL, end - now)
            if not block or left <= 0:
                pipe = r.pipeline(transaction=False)
                pipe.lrem(self.keys[1], 0, token)
                pipe.zrem(self.keys[2], token)
                pipe.execute()
                return False
            r.blpop([grant], max(0.01, left))

    def _snapshot(self, drop: bool) -> tuple[list[str], list[str]]:
        """The dirty values tied to this lease (under ``_state.wb``); with ``drop`` they
        are forgotten too, by every lease they are tied to."""
        keys, values = [], []
        cache = _state.cache
        for ck in sorted(self.cached):
            entry = cache.get(ck)
            if entry is None:
                continue
            if entry.dirty:
                keys.append(ck[1])
                values.append(_encode(entry.value))
                entry.dirty = False
            if drop:
                del cache[ck]
                for other in entry.leases:
                    if other is not self:
                        other.cached.discard(ck)
        if drop:
            self.cached.clear()
        self.dirty = False
        return keys, values

    def hand_over(self) -> None:
        """Write back, release, and grant the lock to the next waiter (one script)."""
        with _state.wb, self.io:
            keys, values = self._snapshot(drop=True)
            self.leased = False
            got, nxt = self._release(keys=[*self.keys, *keys], args=[
                _state.token, _ms(time.time()), _ms(_STALE), _ms(LEASE), *values])
            self.requested = False
        if got == -1:
            raise LeaseLostError(f"the lease of lock {self.name!r} expired while held; "
                                 f"{len(keys)} cached value(s) were not written back")
        if got == 1:
            pipe = _client(self.url).pipeline(transaction=False)
            grant = f"{PREFIX}grant:{nxt.decode()}"
            pipe.lpush(grant, b"1")
            pipe.pexpire(grant, _ms(LEASE))
            pipe.execute()

    def keep(self, write_back: bool) -> None:
        """Renew the lease (and write values back) without letting go; agent thread only.
        Values are only touched with ``held`` taken; a renewal alone needs just ``io``."""
        with _state.wb if write_back else contextlib.nullcontext(), self.io:
            if not self.leased:
                return
            keys, values = self._snapshot(drop=False) if write_back else ([], [])
            ok = self._keep(keys=[self.keys[0], *keys], args=[_state.token, _ms(LEASE), *values])
        if ok:
            self.expires = time.monotonic() + LEASE / 2
        else:
            self.expires = 0.0  # lost: the holder's next release raises LeaseLostError

    def idle_duty(self) -> None:
        """Agent thread: renew (even while held), and while not held act on a request or
        write back values idle for a moment."""
        if not self.leased:
            return
        now = time.monotonic()
        if self.expires and now > self.expires - LEASE / 4:
            self.keep(write_back=False)
        if not (self.requested or (self.dirty and now - self.last_used > _IDLE_WRITE_BACK)):
            return
        if not self.held.acquire(blocking=False):
            return
        try:
            if self.leased and self.requested:
                self.hand_over()
            elif self.leased and self.dirty:
                self.keep(write_back=True)
        finally:
            self.held.release()


class _Agent(threading.Thread):
    """Per process and server: hears release requests for this process's leases."""

    def __init__(self, url: str) -> None:
        super().__init__(name="taskq-shared-agent", daemon=True)
        self.url = url
        self.conn = connect(url, socket_timeout=30.0, socket_connect_timeout=5.0)

    def run(self) -> None:
        key = f"{PREFIX}req:{_state.token}"
        state = _state
        while state is _state:
            try:
                item = self.conn.blpop([key], _IDLE_WRITE_BACK)
            except redis.RedisError:
                time.sleep(0.5)
                continue
            if item is not None:
                name = item[1]
                lease = state.leases.get(
                    (self.url, name.decode() if isinstance(name, bytes) else str(name)))
                if lease is not None:
                    lease.requested = True
            for lease in list(state.leases.values()):
                if lease.url == self.url:
                    try:
                        lease.idle_duty()
                    except Exception:  # the holder's own release reports problems
                        continue


def _agent(url: str) -> None:
    with _state.lock:
        if url not in _state.agents:
            agent = _state.agents[url] = _Agent(url)
            agent.start()


def _lease(url: str, name: str) -> _Lease:
    with _state.lock:
        lease = _state.leases.get((url, name))
        if lease is None:
            lease = _state.leases[(url, name)] = _Lease(url, name)
        return lease


def release_all() -> None:
    """Hand over every lease this process keeps (end of a task, interpreter exit)."""
    for lease in list(_state.leases.values()):
        if lease.leased and lease.held.acquire(blocking=False):
            try:
                if lease.leased:
                    lease.hand_over()
            except Exception:  # best effort: an expired lease frees itself
                pass
            finally:
                lease.held.release()


lifetime.at_exit(lifetime.Phase.RELEASE_SHARED, release_all)  # Redis is still up then
registry.after_each_task(release_all)  # a task that exits holding a lease hands it back


def _default_url() -> str:
    from taskq.compat.process import default_backend

    return default_backend().client.url


class Lock:
    """A lock shared by every process and node that uses the same Redis (and name)."""

    def __init__(self, name: str | None = None, *, url: str | None = None) -> None:
        self.name = name or os.urandom(8).hex()
        self.url = url or _default_url()
        self._lease = _lease(self.url, self.name)

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


def _encode(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(int(value))


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
            ttl_ms = None if name is not None or ttl is None else _ms(ttl)
            _client(self.url).set(self.key, _encode(init), nx=name is not None, px=ttl_ms)

    def _decode(self, raw: Any) -> Any:
        if raw is None:
            raise TaskqError(f"shared value {self.name!r} does not exist (expired?)")
        return self._type(float(raw)) if self._type is not int else int(raw)

    def _leases(self) -> list[_Lease]:
        return [lease for lease in _held() if lease.url == self.url]

    def _cache(self, entry: _Entry) -> None:
        _state.cache[self._ckey] = entry
        for lease in entry.leases:
            lease.cached.add(self._ckey)

    @property
    def value(self) -> Any:
        entry = _state.cache.get(self._ckey)
        if entry is not None:
            return entry.value
        leases = self._leases()
        value = self._decode(_client(self.url).get(self.key))
        if leases:  # cached until one of the held leases goes
            with _state.wb:
                entry = _state.cache.get(self._ckey)
                if entry is not None:
                    return entry.value
                self._cache(_Entry(value, False, leases))
        return value

    @value.setter
    def value(self, value: Any) -> None:
        value = self._type(value)
        with _state.wb:
            entry = _state.cache.get(self._ckey)
            if entry is None:
                leases = self._leases()
                if leases:
                    self._cache(entry := _Entry(value, True, leases))
            if entry is not None:
                entry.value, entry.dirty = value, True
                for lease in entry.leases:
                    lease.dirty = True
                return
        _client(self.url).set(self.key, _encode(value), keepttl=True)

    def increment(self, n: int | float = 1) -> Any:
        """Add ``n`` atomically (even without a lock); returns the new value."""
        with _state.wb:
            if _state.cache.get(self._ckey) is not None or self._leases():
                self.value = new = self.value + n
                return new
        r = _client(self.url)
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
