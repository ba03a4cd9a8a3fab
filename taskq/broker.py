"""Every Redis key and call of taskq.

Per queue ``q`` every key carries the hash tag ``{q}`` (Redis Cluster ready); each
atomic operation is one Lua script in ``taskq/lua`` that receives all its keys in KEYS.

==============================  ===========================================================
``taskq:{q}:stream``            the queue (stream, consumer group ``workers``; pending
                                entries are the in-flight set, their idle time the lease)
``taskq:{q}:stats``             hash of counters: enqueued, done, failed, retried, dead, …
``taskq:{q}:delayed``           sorted set of retries waiting out their backoff
``taskq:{q}:dead``              dead-letter stream (packed entry, reason, error)
``taskq:{q}:result:<task>``     a task's outcome JSON, with a TTL
``taskq:{q}:inbox:<client>``    a producer's reply list (JSON arrays of outcomes)
``taskq:{q}:batch:<id>``        hash: total, done, failed (+ reduce hint for the CLI)
``taskq:{q}:batch:<id>:events`` list pushed once when a batch is complete
``taskq:queues``                set of queue names seen (for ``taskq info``)
``taskq:nodes``                 sorted set node id → last heartbeat (ms)
``taskq:node:<id>``             hash describing a node, with a TTL
==============================  ===========================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from redis.commands.core import Script

from taskq.config import validate_queue_name
from taskq.errors import BrokerError, ConfigError
from taskq.message import Routing

GROUP = "workers"
QUEUES_KEY = "taskq:queues"
NODES_KEY = "taskq:nodes"
_FIELD_BODY, _FIELD_SIG, _FIELD_ATTEMPT = b"m", b"s", b"n"


def node_key(node_id: str) -> str:
    return f"taskq:node:{node_id}"


@dataclass(frozen=True)
class QueueKeys:
    queue: str

    @property
    def prefix(self) -> str:
        return f"taskq:{{{self.queue}}}:"

    @property
    def stream(self) -> str:
        return self.prefix + "stream"

    @property
    def stats(self) -> str:
        return self.prefix + "stats"

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}result:{task_id}"

    def inbox(self, client_id: str) -> str:
        return f"{self.prefix}inbox:{client_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def batch_events(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}:events"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as the worker handles it: raw bytes, never decoded here."""

    entry_id: bytes
    body: bytes
    signature: bytes | None
    attempt: int

    def packed(self) -> bytes:
        """The form stored in the delayed set and the dead-letter stream."""
        return b"%d|%s|%s" % (self.attempt, self.signature or b"", self.body)

    @classmethod
    def from_fields(cls, entry_id: bytes, fields: Sequence[bytes] | dict[bytes, bytes]) -> Entry:
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        try:
            attempt = int(fields.get(_FIELD_ATTEMPT, b"1"))
        except ValueError:
            attempt = 1
        return cls(entry_id, fields.get(_FIELD_BODY, b""), fields.get(_FIELD_SIG), attempt)


def unpack_entry(packed: bytes) -> tuple[int, bytes | None, bytes]:
    attempt, sig, body = packed.split(b"|", 2)
    return int(attempt), sig or None, body


def entry_fields(body: bytes, signature: bytes | None = None, attempt: int = 1) -> dict[bytes, bytes]:
    fields = {_FIELD_BODY: body}
    if signature:
        fields[_FIELD_SIG] = signature
    if attempt != 1:
        fields[_FIELD_ATTEMPT] = str(attempt).encode()
    return fields


@dataclass(frozen=True, slots=True)
class Report:
    """One outcome for :meth:`Broker.complete`."""

    entry_id: bytes
    kind: str  # ok | fail | retry | dead
    routing: Routing | None
    outcome: bytes = b""
    x1: bytes = b""
    x2: bytes = b""


def _load_script(client: redis.Redis, name: str) -> Script:
    source = resources.files("taskq").joinpath(f"lua/{name}.lua").read_text()
    return client.register_script(source)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; an unparseable URL is a :class:`ConfigError`."""
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from None


def unreachable(url: str, exc: Exception) -> BrokerError:
    """The one-line error for a Redis that cannot be reached."""
    return BrokerError(f"cannot reach Redis at {url}: {exc}")


class Broker:
    """One queue's Redis operations."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = validate_queue_name(queue)
        self.keys = QueueKeys(queue)
        self._complete = _load_script(client, "complete")
        self._renew = _load_script(client, "renew")
        self._reclaim = _load_script(client, "reclaim")
        self._promote = _load_script(client, "promote")
        self._handback = _load_script(client, "handback")

    # -- setup ----------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and its group from id 0, so nothing enqueued earlier is skipped."""
        try:
            self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client.sadd(QUEUES_KEY, self.queue)

    # -- producer side ----------------------------------------------------------------

    def enqueue(
        self,
        pipe: redis.client.Pipeline,
        body: bytes,
        signature: bytes | None = None,
    ) -> None:
        """Queue an XADD on ``pipe`` (callers pipeline many and count them once)."""
        pipe.xadd(self.keys.stream, entry_fields(body, signature))  # type: ignore[arg-type]

    def count_enqueued(self, pipe: redis.client.Pipeline, n: int) -> None:
        pipe.hincrby(self.keys.stats, "enqueued", n)

    def create_batch(
        self, pipe: redis.client.Pipeline, batch_id: str, total: int, ttl: float, **extra: str
    ) -> None:
        key = self.keys.batch(batch_id)
        fields: dict[str, str | int] = {"total": total, "done": 0, "failed": 0, **extra}
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(key, int(ttl * 1000))

    # -- worker side ----------------------------------------------------------------

    def complete(self, consumer: str, reports: Sequence[Report], result_ttl: float) -> tuple[int, int]:
        """Apply many outcomes atomically; returns (applied, suppressed as not owned)."""
        keys = self.keys
        key_list: list[str] = [keys.stream, keys.stats, keys.delayed, keys.dead]
        index: dict[str, int] = {}

        def key_index(key: str) -> int:
            i = index.get(key)
            if i is None:
                key_list.append(key)
                i = index[key] = len(key_list)
            return i

        argv: list[Any] = [GROUP, consumer, int(result_ttl * 1000), int(time.time() * 1000)]
        for r in reports:
            rk = ik = bk = 0
            if r.routing is not None and r.kind != "retry":
                if r.routing.keep_result:
                    rk = key_index(keys.result(r.routing.task_id))
                if r.routing.reply_to:
                    ik = key_index(keys.inbox(r.routing.reply_to))
                if r.routing.batch:
                    bk = key_index(keys.batch(r.routing.batch))
                    key_index(keys.batch_events(r.routing.batch))
            argv += [r.entry_id, r.kind, rk, ik, bk, r.outcome, r.x1, r.x2]
        applied, suppressed = self._complete(keys=key_list, args=argv)
        return int(applied), int(suppressed)

    def renew(self, consumer: str, entry_ids: Sequence[bytes] | None = None,
              limit: int = 100_000) -> int:
        """Reset the lease clock of ``entry_ids`` (None: of all) that ``consumer`` still owns."""
        if entry_ids is not None and not entry_ids:
            return 0
        args: list[Any] = [GROUP, consumer, limit, *(entry_ids or ())]
        return int(self._renew(keys=[self.keys.stream], args=args))

    def reclaim(self, consumer: str, lease: float, count: int, *, suspects: int | None = None,
                plain: bool = True, max_deliveries: int = 2**31) -> list[tuple[Entry, int]]:
        """Entries whose lease expired, now owned by ``consumer``, with delivery counts.

        ``suspects`` caps the entries taken that already lost two nodes (None: no cap);
        ``plain=False`` takes only those and the ones past ``max_deliveries``."""
        rows = self._reclaim(
            keys=[self.keys.stream],
            args=[GROUP, consumer, int(lease * 1000), count,
                  count if suspects is None else suspects, int(plain), max_deliveries],
        )
        return [(Entry.from_fields(row[0], row[2]), int(row[1])) for row in rows]

    def promote(self, limit: int = 1000) -> int:
        now_ms = int(time.time() * 1000)
        return int(self._promote(keys=[self.keys.delayed, self.keys.stream], args=[now_ms, limit]))

    def hand_back(self, consumer: str, entry_ids: Iterable[bytes]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        return int(self._handback(keys=[self.keys.stream], args=[GROUP, consumer, *ids]))

    # -- inspection and management ------------------------------------------------------

    def result(self, task_id: str) -> bytes | None:
        raw: Any = self.client.get(self.keys.result(task_id))
        return cast("bytes | None", raw)

    def batch_status(self, batch_id: str) -> dict[str, str]:
        raw: Any = self.client.hgetall(self.keys.batch(batch_id))
        return _text_dict(raw)

    def info(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.hgetall(self.keys.stats)
        pipe.zcard(self.keys.delayed)
        pipe.xlen(self.keys.dead)
        length, stats, delayed, dead = pipe.execute()
        try:
            pending = int(self.client.xpending(self.keys.stream, GROUP)["pending"])
        except redis.ResponseError:  # no group yet
            pending = 0
        counters = {k.decode(): int(v) for k, v in stats.items()}
        return {
            "queued": max(0, int(length) - pending),
            "in_flight": pending,
            "delayed": int(delayed),
            "done": counters.get("done", 0),
            "failed": counters.get("failed", 0),
            "retried": counters.get("retried", 0),
            "dead": int(dead),
            "enqueued": counters.get("enqueued", 0),
            "suppressed": counters.get("suppressed", 0),
        }

    def dead_entries(self, count: int = 100) -> list[tuple[str, dict[bytes, bytes]]]:
        rows: Any = self.client.xrange(self.keys.dead, count=count)
        return [(eid.decode(), dict(fields)) for eid, fields in rows]

    def dead_retry(self, dead_ids: Sequence[str] | None) -> int:
        """Re-enqueue dead-lettered tasks (all when ``dead_ids`` is None) as attempt 1."""
        rows: Any = (
            self.client.xrange(self.keys.dead)
            if dead_ids is None
            else [r for i in dead_ids for r in self.client.xrange(self.keys.dead, i, i) or ()]
        )
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=True)
        for dead_id, fields in rows:
            _, sig, body = unpack_entry(fields[b"packed"])
            pipe.xadd(self.keys.stream, entry_fields(body, sig))  # type: ignore[arg-type]
            pipe.xdel(self.keys.dead, dead_id)
        pipe.execute()
        return len(rows)

    def dead_purge(self) -> int:
        n = int(self.client.xlen(self.keys.dead))
        self.client.delete(self.keys.dead)
        return n


def all_queues(client: redis.Redis) -> list[str]:
    members: Any = client.smembers(QUEUES_KEY)
    return sorted(q.decode() for q in members)


def live_nodes(client: redis.Redis, max_age: float = 30.0) -> list[dict[str, str]]:
    cutoff = int((time.time() - max_age) * 1000)
    ids: Any = client.zrangebyscore(NODES_KEY, cutoff, "+inf")
    nodes = []
    for node_id in ids:
        raw: Any = client.hgetall(node_key(node_id.decode()))
        if raw:
            nodes.append(_text_dict(raw))
    return nodes


def _text_dict(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}
