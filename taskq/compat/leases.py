"""The lease protocol behind ``Lock`` and ``Value`` (:mod:`taskq.compat.shared`): one
process's leases, the values cached under them, and the agent thread that hands them over.

Per process (rebuilt after a fork, see :func:`current`): a token, one :class:`Lease` per
lock it has used, the cache of values read or written under held leases, and one agent
thread per Redis that hears release requests (``taskq:{shared}:req:<token>``), renews
leases and writes back values idle for ``_IDLE_WRITE_BACK`` seconds. A lease is taken,
renewed and released (with the write-back and the grant to the next waiter) by the
``lock_*.lua`` scripts, each one atomic step. :func:`release_all` hands every lease
back, at the end of each task and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
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
        self.leases: dict[tuple[str, str], Lease] = {}
        self.cache: dict[CacheKey, Entry] = {}
        self.wb = threading.RLock()  # the cache, and write-backs from snapshot to Redis
        self.agents: dict[str, _Agent] = {}
        self.lock = threading.Lock()
        self.tls = threading.local()


CacheKey = tuple[str, str]  # (url, value key)


class Entry:
    """A value cached in this process, valid while every lease held when it was loaded
    stays leased (the lock that protects it is one of them)."""

    __slots__ = ("dirty", "leases", "value")

    def __init__(self, value: Any, dirty: bool, leases: list[Lease]) -> None:
        self.value, self.dirty, self.leases = value, dirty, leases


_state = _State()
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_state", _State()))


def current() -> _State:
    """This process's state (a new one after a fork: never keep it across one)."""
    return _state


def client_for(url: str) -> redis.Redis:
    client = _state.clients.get(url)
    if client is None:
        client = _state.clients[url] = connect(url, socket_timeout=30.0, socket_connect_timeout=5.0)
    return client


def _script(url: str, name: str) -> Script:
    return load_script(client_for(url), __package__ or "taskq.compat", name)


def held_leases() -> list[Lease]:
    stack = getattr(_state.tls, "held", None)
    if stack is None:
        stack = _state.tls.held = []
    return cast("list[Lease]", stack)


def ms(seconds: float) -> int:
    return int(seconds * 1000)


class Lease:
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
        held_leases().append(self)
        return True

    def release(self) -> None:
        if not self.held.locked():
            raise ValueError("lock released too many times")
        stack = held_leases()
        if self in stack:
            stack.remove(self)
        self.last_used = time.monotonic()
        try:
            if self.requested or self.last_used > self.expires:
                self.hand_over()
        finally:
            self.held.release()

    def _take(self, block: bool, timeout: float | None) -> bool:
        r = client_for(self.url)
        token = _state.token
        end = None if timeout is None or not block else time.monotonic() + timeout
        grant = f"{PREFIX}grant:{token}"
        while True:
            now = time.monotonic()
            got, owner = self._acquire(keys=self.keys, args=[token, ms(time.time()), ms(_STALE),
                                                             ms(LEASE)])
            if got == 1:
                self.leased, self.requested = True, False
                self.expires = now + LEASE / 2
                _agent(self.url)
                return True
            if owner:
                pipe = r.pipeline(transaction=False)
                pipe.lpush(f"{PREFIX}req:{owner.decode()}", self.name)
                pipe.pexpire(f"{PREFIX}req:{owner.decode()}", ms(LEASE))
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
                values.append(encode(entry.value))
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
                _state.token, ms(time.time()), ms(_STALE), ms(LEASE), *values])
            self.requested = False
        if got == -1:
            raise LeaseLostError(f"the lease of lock {self.name!r} expired while held; "
                                 f"{len(keys)} cached value(s) were not written back")
        if got == 1:
            pipe = client_for(self.url).pipeline(transaction=False)
            grant = f"{PREFIX}grant:{nxt.decode()}"
            pipe.lpush(grant, b"1")
            pipe.pexpire(grant, ms(LEASE))
            pipe.execute()

    def keep(self, write_back: bool) -> None:
        """Renew the lease (and write values back) without letting go; agent thread only.
        Values are only touched with ``held`` taken; a renewal alone needs just ``io``."""
        with _state.wb if write_back else contextlib.nullcontext(), self.io:
            if not self.leased:
                return
            keys, values = self._snapshot(drop=False) if write_back else ([], [])
            ok = self._keep(keys=[self.keys[0], *keys], args=[_state.token, ms(LEASE), *values])
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
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                # Away or failing over (a cluster with no reachable node raises the latter,
                # which is no RedisError): this thread must outlive any outage.
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


def lease_for(url: str, name: str) -> Lease:
    with _state.lock:
        lease = _state.leases.get((url, name))
        if lease is None:
            lease = _state.leases[(url, name)] = Lease(url, name)
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


def encode(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(int(value))


