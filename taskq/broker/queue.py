"""One queue's Redis operations: every Redis call a producer or a node makes on a queue.

Each atomic operation is one Lua script beside this module (``lua/*.lua``, each with a
key-layout header) that receives all its keys in KEYS; everything else is a plain command
or a pipeline. Nothing here decodes an envelope: entries are bytes in, bytes out.

Every key of one call shares the queue's ``{q}`` tag, so on a Redis Cluster each call
goes to the queue's master; scripts are always called directly, never inside a pipeline
(a cluster pipeline refuses them). With ``wait_replicas`` an enqueue and a completion
end with ``WAIT N`` on the connection that wrote (a plain pipeline on the slot's master,
:func:`taskq.broker.cluster.slot_client`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, cast

import redis
from redis.commands.core import Script

from taskq.broker.bulk import append_many
from taskq.broker.cluster import slot_client
from taskq.broker.keys import GROUP, QUEUES_KEY, QueueKeys, dedup_key_of
from taskq.config import validate_queue_name
from taskq.message import Entry, Report, stream_fields

_STREAM_ID = re.compile(r"\d+(-\d+)?")
WAIT_TIMEOUT = 5.0
"""Seconds a ``WAIT`` for replicas may take before the write counts as under-replicated."""
log = logging.getLogger("taskq.broker")

RENEW_SLICE = 1000
"""Held entries renewed per renew.lua call."""

Signed = tuple[bytes, bytes | None]
"""An envelope ready to queue: body and its signature (None: unsigned)."""


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """A Lua script of ``package``'s ``lua/`` folder, registered on ``client``."""
    source = resources.files(package).joinpath(f"lua/{name}.lua").read_text()
    return client.register_script(source)


def _stream_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def completion_result(reply: Any) -> tuple[int, int]:
    """complete.lua's answer: (applied, suppressed)."""
    applied, suppressed = reply
    return int(applied), int(suppressed)


class Broker:
    """One queue's Redis operations, on one client."""

    def __init__(self, client: redis.Redis, queue: str, *, wait_replicas: int = 0) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        """Replicas that must have an enqueue / a completion before it returns (0: none)."""
        self.queue = validate_queue_name(queue)
        self.keys = QueueKeys(queue)
        self._complete = load_script(client, __package__, "complete")
        self._renew = load_script(client, __package__, "renew")
        self._reclaim = load_script(client, __package__, "reclaim")
        self._promote = load_script(client, __package__, "promote")
        self._handback = load_script(client, __package__, "handback")

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

    def enqueue(self, envelopes: Sequence[Signed],
                batch: tuple[str, float, dict[str, str]] | None = None) -> list[bytes]:
        """XADD every envelope in one round trip, packed by hand (:mod:`taskq.broker.bulk`),
        counted once; with ``batch`` = (id, ttl, extra fields), the batch hash is created
        first. The entry ids."""
        before: list[tuple[Any, ...]] = []
        if batch is not None:
            batch_id, ttl, extra = batch
            key = self.keys.batch(batch_id)
            fields: dict[str, str | int] = {"total": len(envelopes), "done": 0, "failed": 0,
                                            **extra}
            before.append(("HSET", key, *(x for kv in fields.items() for x in kv)))
            before.append(("PEXPIRE", key, int(ttl * 1000)))
        after: list[tuple[Any, ...]] = [("HINCRBY", self.keys.stats, "enqueued", len(envelopes))]
        if self.wait_replicas:
            after.append(("WAIT", self.wait_replicas, int(WAIT_TIMEOUT * 1000)))
        replies = append_many(self.client, self.keys.stream, envelopes, before, after)
        if self.wait_replicas:
            self._check_replicas(replies[-1], "enqueue")
        return cast("list[bytes]", replies[len(before):len(before) + len(envelopes)])

    def _writer(self) -> Any:
        """A pipeline for a write: with ``wait_replicas``, a plain one on the master of
        the queue's slot, so the WAIT that ends it waits for this connection's writes."""
        client = slot_client(self.client, self.keys.stream) if self.wait_replicas else self.client
        return client.pipeline(transaction=False)

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        """Run ``pipe``, ended by ``WAIT N`` when asked; an under-replicated write is
        logged (it was applied on the master: retrying it would duplicate it)."""
        if not self.wait_replicas:
            replies: list[Any] = pipe.execute()
            return replies
        pipe.execute_command("WAIT", self.wait_replicas, int(WAIT_TIMEOUT * 1000))
        *written, acked = pipe.execute()
        self._check_replicas(acked, what)
        return list(written)

    def _check_replicas(self, acked: Any, what: str) -> None:
        if int(acked) < self.wait_replicas:
            log.warning("%s on %s reached %d of %d replica(s) within %.0f s: it may be lost "
                        "if the master fails now", what, self.queue, int(acked),
                        self.wait_replicas, WAIT_TIMEOUT)

    def pop_replies(self, conn: redis.Redis, client_id: str, timeout: float) -> list[bytes]:
        """Block up to ``timeout`` s for the first reply in ``client_id``'s inbox (on
        ``conn``, the listener's own connection); [] if none came. Callers drain more
        with :meth:`drain_replies` after handling the first one (latency first)."""
        item: Any = conn.blpop([self.keys.inbox(client_id)], timeout=timeout)
        return [item[1]] if item else []

    def drain_replies(self, conn: redis.Redis, client_id: str, most: int = 1000) -> list[bytes]:
        blobs: Any = conn.lpop(self.keys.inbox(client_id), most)
        return list(blobs or ())

    def wake_listener(self, client_id: str, token: bytes) -> None:
        """Push ``token`` into the inbox so a listener blocked on it returns now."""
        self.client.lpush(self.keys.inbox(client_id), token)

    def stored_results(self, task_ids: Sequence[str],
                       conn: redis.Redis | None = None) -> list[bytes | None]:
        """The stored outcomes of ``task_ids`` (None where there is none), in order."""
        if not task_ids:
            return []
        raw: Any = (conn or self.client).mget([self.keys.result(t) for t in task_ids])
        return cast("list[bytes | None]", list(raw))

    def task_states(self, sent: Sequence[tuple[str, bytes]],
                    conn: redis.Redis | None = None) -> list[tuple[bool, bytes | None]]:
        """For each (task id, stream entry id): is the entry still in the stream (queued
        or running: completion deletes it), and the task's stored outcome (or None).
        One pipelined round trip; callers chunk."""
        pipe = (conn or self.client).pipeline(transaction=False)
        for task_id, entry_id in sent:
            pipe.xrange(self.keys.stream, entry_id, entry_id, count=1)
            pipe.get(self.keys.result(task_id))
        raw = pipe.execute()
        return [(bool(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]

    def locate(self, task_ids: Iterable[str], after: bytes, most: int = 20_000,
               conn: redis.Redis | None = None) -> tuple[dict[str, bytes | None], bool]:
        """Look for tasks that left their stream entry without finishing: waiting out a
        retry's backoff (found with None) or promoted again to a later entry (found with
        its new id). Reads at most ``most`` entries of each of the delayed set and the
        stream (past ``after``), in chunks of 1000; (found, whether everything was read)."""
        client = conn or self.client
        wanted = {b'"id":"' + t.encode() + b'"': t for t in task_ids}
        found: dict[str, bytes | None] = {}

        def match(entry_id: bytes | None, blob: bytes) -> None:
            for needle, task_id in wanted.items():
                if needle in blob:
                    found[task_id] = entry_id

        members: Any = client.zrange(self.keys.delayed, 0, most)
        for member in members[:most]:
            match(None, member)
        complete = len(members) <= most
        start, read = b"(" + after, 0
        while read < most:
            rows: Any = client.xrange(self.keys.stream, start, "+", count=1000)
            for entry_id, fields in rows:
                match(entry_id, fields.get(b"m", b""))
            read += len(rows)
            if len(rows) < 1000:
                return found, complete
            start = b"(" + rows[-1][0]
        return found, False

    def wait_batch_event(self, batch_id: str, timeout: float) -> None:
        """Block up to ``timeout`` s for the batch's completion event. Rotating the
        one-element events list leaves it there for other waiters."""
        events = self.keys.batch_events(batch_id)
        self.client.blmove(events, events, max(timeout, 0.01), "RIGHT", "LEFT")  # type: ignore[arg-type]

    # -- node side ------------------------------------------------------------------

    def complete(self, consumer: str, reports: Sequence[tuple[bytes, Report]],
                 result_ttl: float) -> tuple[int, int]:
        """Apply many (entry id, report) outcomes atomically; returns (applied, suppressed
        because this consumer no longer owns the entry)."""
        keys, argv = self.completion_call(consumer, reports, result_ttl)
        if not self.wait_replicas:
            return completion_result(self._complete(keys=keys, args=argv))
        pipe = self._writer()  # one connection for the script and the WAIT after it
        self._complete(keys=keys, args=argv, client=pipe)
        return completion_result(self._execute(pipe, "completion")[0])

    def load_complete(self) -> None:
        """Load complete.lua into the server's script cache, for ``EVALSHA`` sent on a
        connection of its own (a server that lost it answers NOSCRIPT: the caller then
        goes through :meth:`complete`, which loads it again)."""
        self.client.script_load(self._complete.script)

    @property
    def complete_sha(self) -> str:
        """The SHA1 of complete.lua, for an ``EVALSHA`` sent on a connection of its own
        (:class:`taskq.broker.blocking.BlockingRead`)."""
        return str(self._complete.sha)

    def completion_call(self, consumer: str, reports: Sequence[tuple[bytes, Report]],
                        result_ttl: float) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of complete.lua for these (entry id, report) outcomes."""
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
        for entry_id, r in reports:
            rk = ik = bk = 0
            if r.routing is not None and r.kind != "retry":
                if r.routing.keep_result:
                    rk = key_index(keys.result(r.routing.task_id))
                    dedup = dedup_key_of(r.routing.task_id)
                    if dedup is not None:  # declared for complete.lua's release_dedup
                        key_index(keys.dedup(dedup))
                        key_index(keys.dedup_waiters(dedup))
                if r.routing.reply_to:
                    ik = key_index(keys.inbox(r.routing.reply_to))
                if r.routing.batch:
                    bk = key_index(keys.batch(r.routing.batch))
                    key_index(keys.batch_events(r.routing.batch))
            argv += [entry_id, r.kind, rk, ik, bk, r.outcome, r.packed, r.extra]
        return key_list, argv

    def renew(self, consumer: str, entry_ids: Sequence[bytes] | None = None,
              limit: int = 100_000) -> int:
        """Reset the lease clock of ``entry_ids`` (None: of all, up to ``limit``) that
        ``consumer`` still owns. Listed ids go in sorted slices of :data:`RENEW_SLICE`,
        one call each over its own id range: with 10,000 held, no call blocks Redis for
        more than a few ms."""
        if entry_ids is None:
            return int(self._renew(keys=[self.keys.stream],
                                   args=[GROUP, consumer, limit, "-", "+"]))
        ids = sorted(entry_ids, key=_stream_order)
        renewed = 0
        for i in range(0, len(ids), RENEW_SLICE):
            part = ids[i:i + RENEW_SLICE]
            renewed += int(self._renew(keys=[self.keys.stream], args=[
                GROUP, consumer, 2 * len(part) + 64, part[0], part[-1], *part]))
        return renewed

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
        """Move due retries from the delayed set back into the stream."""
        now_ms = int(time.time() * 1000)
        return int(self._promote(keys=[self.keys.delayed, self.keys.stream], args=[now_ms, limit]))

    def hand_back(self, consumer: str, entry_ids: Iterable[bytes]) -> int:
        """Give entries ``consumer`` owns back to the queue at once (not after a lease)."""
        ids = list(entry_ids)
        if not ids:
            return 0
        return int(self._handback(keys=[self.keys.stream], args=[GROUP, consumer, *ids]))

    def pending_ids(self, consumer: str, most: int = 100_000) -> list[bytes]:
        """Ids of the entries pending under ``consumer`` (delivered, not yet acked)."""
        pending: Any = self.client.xpending_range(
            self.keys.stream, GROUP, min="-", max="+", count=most, consumername=consumer)
        return [p["message_id"] for p in pending]

    def delayed_count(self) -> int:
        n: Any = self.client.zcard(self.keys.delayed)
        return int(n)

    # -- inspection and management ------------------------------------------------------

    def result(self, task_id: str) -> bytes | None:
        raw: Any = self.client.get(self.keys.result(task_id))
        return cast("bytes | None", raw)

    def batch_status(self, batch_id: str) -> dict[str, str]:
        raw: Any = self.client.hgetall(self.keys.batch(batch_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

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
        """Re-enqueue dead-lettered tasks (all when ``dead_ids`` is None) as attempt 1;
        how many were found. ValueError for an id that is not a stream id (``1700-0``)."""
        for dead_id in dead_ids or ():
            if not _STREAM_ID.fullmatch(dead_id):
                raise ValueError(f"{dead_id!r} is not a dead-letter id (like 1700000000000-0, "
                                 "from `taskq dead list`)")
        rows: Any = (
            self.client.xrange(self.keys.dead)
            if dead_ids is None
            else [r for i in dead_ids for r in self.client.xrange(self.keys.dead, i, i) or ()]
        )
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=True)
        for dead_id, fields in rows:
            entry = Entry.unpack(fields[b"packed"])
            pipe.xadd(self.keys.stream, stream_fields(entry.body, entry.signature))  # type: ignore[arg-type]
            pipe.xdel(self.keys.dead, dead_id)
        pipe.execute()
        return len(rows)

    def dead_purge(self) -> int:
        n = int(self.client.xlen(self.keys.dead))
        self.client.delete(self.keys.dead)
        return n
