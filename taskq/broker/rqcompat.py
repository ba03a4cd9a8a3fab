"""The Redis side of :mod:`taskq.rq` (rq's producer API over taskq): its keys, its writes
and the bounded reads that answer "what state is this job in?".

Keys, beside the queue's own (same ``{q}`` hash tag, so one script reaches them all):

==============================  ===========================================================
``taskq:{q}:rq:job:<id>``       hash: ``entry`` (the stream entry id it was queued as),
                                ``func``, ``at`` (enqueue time, s), ``status`` (only
                                ``canceled``); TTL :data:`RECORD_TTL`
``taskq:rq:origin:<id>``        the job's queue name, so ``Job.fetch(id)`` needs no queue;
                                same TTL (a key of its own: it names no queue's slot)
==============================  ===========================================================

How a job's state is found (:meth:`RqJobs.state`), cheapest first, every step bounded:

1. its result key (O(1)): a stored outcome is finished or failed (dead letters included);
2. its record: ``canceled``; else the entry it was queued as: pending in the consumer
   group (``XPENDING id id 1``) is started, in the stream (``XRANGE id id``) is queued;
3. the delayed set (retries in backoff): ``ZSCAN MATCH`` on the envelope's id, at most
   :data:`SCAN_LIMIT` members looked at; found is scheduled;
4. a retry promoted back into the stream (or an entry handed back) has a new entry id:
   the newest :data:`SCAN_LIMIT` entries after the old one are searched, and the record
   is pointed at the new id so the next lookup is O(1) again;
5. the result key once more (the job may have completed during 2-4); else None.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis

from taskq.broker.keys import GROUP
from taskq.broker.queue import Broker, Signed, load_script

RECORD_TTL = 30 * 24 * 3600.0
"""Seconds a job's record (and origin key) lives: longer than any job should wait."""
SCAN_LIMIT = 1000
"""Most delayed members, and most newer stream entries, one state lookup reads."""
_ORIGIN = "taskq:rq:origin:"


def origin_key(job_id: str) -> str:
    return _ORIGIN + job_id


def origin(client: redis.Redis, job_id: str) -> str | None:
    """The queue a job was enqueued on through taskq.rq, or None if unknown (expired)."""
    raw: Any = client.get(origin_key(job_id))
    return raw.decode() if raw else None


def envelope_prefix(job_id: str) -> bytes:
    """How every envelope of task ``job_id`` begins (message.py writes ``id`` first)."""
    return b'{"id":' + orjson.dumps(job_id) + b","


class RqJobs:
    """taskq.rq's reads and writes on one queue (through its :class:`Broker`)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.client = broker.client
        self.keys = broker.keys
        self._enqueue = load_script(self.client, __package__, "rq_enqueue")
        self._cancel = load_script(self.client, __package__, "rq_cancel")

    def record_key(self, job_id: str) -> str:
        return f"{self.keys.prefix}rq:job:{job_id}"

    # -- writes -------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[tuple[str, str, Signed]], *, only_new: bool = False,
                conn: redis.Redis | None = None) -> list[bool]:
        """Queue ``(job id, task name, (body, signature))`` jobs with their records, in one
        script call (atomic per job); with ``only_new`` a job whose record exists is not
        queued again. Returns, per job, whether it was queued. ``conn`` writes the
        origin keys in the same round trip (the default: this broker's client)."""
        if not jobs:
            return []
        keys = [self.keys.stream, self.keys.stats, *(self.record_key(j) for j, _, _ in jobs)]
        args: list[Any] = [int(only_new), int(RECORD_TTL * 1000), repr(time.time())]
        for _, task, (body, signature) in jobs:
            args += [body, signature or b"", task]
        pipe = (conn or self.client).pipeline(transaction=False)
        self._enqueue(keys=keys, args=args, client=pipe)
        ttl_ms = int(RECORD_TTL * 1000)
        for job_id, _, _ in jobs:
            pipe.set(origin_key(job_id), self.broker.queue, px=ttl_ms)
        entries = pipe.execute()[0]
        return [bool(e) for e in entries]

    def store_outcome(self, job_id: str, task: str, outcome: bytes, ttl: float) -> None:
        """A job run in the producer (``is_async=False``): its outcome and records."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.result(job_id), outcome, px=max(1, int(ttl * 1000)))
        record = self.record_key(job_id)
        pipe.delete(record)
        pipe.hset(record, mapping={"func": task, "at": repr(time.time())})
        pipe.pexpire(record, int(RECORD_TTL * 1000))
        pipe.set(origin_key(job_id), self.broker.queue, px=int(RECORD_TTL * 1000))
        pipe.execute()

    def cancel(self, job_id: str) -> str:
        """Take a job no node has claimed out of the queue: ``canceled``, ``started`` (a
        node holds it: left alone) or ``gone`` (nothing queued or delayed)."""
        record = self.record(job_id)
        entry = record.get(b"entry", b"")
        found = self._locate(job_id, entry) if entry else None
        member = self._delayed_member(job_id) or b""
        if found is not None:
            entry = found[0]
        result = self._cancel(keys=[self.keys.stream, self.keys.delayed, self.record_key(job_id)],
                              args=[GROUP, entry, member])
        return cast(bytes, result).decode()

    # -- reads --------------------------------------------------------------------------

    def record(self, job_id: str) -> dict[bytes, bytes]:
        raw: Any = self.client.hgetall(self.record_key(job_id))
        return cast("dict[bytes, bytes]", raw)

    def state(self, job_id: str) -> tuple[str | None, bytes | None]:
        """``(status, stored outcome)``: status is finished/failed (with the outcome),
        canceled, started, queued, scheduled, or None (unknown or expired). See the
        module docstring for the steps and their bounds."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.result(job_id))
        pipe.hgetall(self.record_key(job_id))
        raw, record = pipe.execute()
        if raw is not None:
            return _finished(raw), raw
        if record.get(b"status") == b"canceled":
            return "canceled", None
        entry = record.get(b"entry")
        if entry:
            found = self._locate(job_id, entry)
            if found is not None:
                return ("started" if found[1] else "queued"), None
        if self._delayed_member(job_id) is not None:
            return "scheduled", None
        raw = self.broker.result(job_id)
        return (_finished(raw), raw) if raw is not None else (None, None)

    def _locate(self, job_id: str, entry: bytes) -> tuple[bytes, bool] | None:
        """The job's live stream entry (the one it was queued as, else a newer one with
        its envelope) and whether a node has claimed it; None if it is in neither."""
        stream = self.keys.stream
        pipe = self.client.pipeline(transaction=False)
        pipe.xrange(stream, entry, entry)
        pipe.xpending_range(stream, GROUP, min=entry, max=entry, count=1)
        try:
            rows, pending = pipe.execute()
        except redis.ResponseError:  # no group (yet, or any more)
            return None
        if rows:
            return entry, bool(pending)
        prefix = envelope_prefix(job_id)
        newer: Any = self.client.xrevrange(stream, "+", b"(" + entry, count=SCAN_LIMIT)
        for entry_id, fields in newer:
            if fields.get(b"m", b"").startswith(prefix):
                self.client.hset(self.record_key(job_id), "entry", entry_id)
                claimed: Any = self.client.xpending_range(
                    stream, GROUP, min=entry_id, max=entry_id, count=1)
                return entry_id, bool(claimed)
        return None

    def _delayed_member(self, job_id: str) -> bytes | None:
        """The job's member of the delayed set (``<attempt>|<sig>|<body>``), if there."""
        # Job ids are [A-Za-z0-9_-] (taskq.rq checks), so the pattern needs no escaping.
        pattern = b"*|" + envelope_prefix(job_id) + b"*"
        cursor, seen = 0, 0
        while True:
            cursor, members = cast(
                "tuple[int, list[tuple[bytes, float]]]",
                self.client.zscan(self.keys.delayed, cursor, match=pattern, count=200))
            for member, _ in members:
                return member
            seen += 200
            if cursor == 0 or seen >= SCAN_LIMIT:
                return None

    def queued_count(self) -> int:
        """Entries in the stream that no node has claimed (rq's ``len(queue)``)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.xpending(self.keys.stream, GROUP)
        try:
            length, pending = pipe.execute()
        except redis.ResponseError:  # no group yet: nothing claimed
            return int(cast(Any, self.client.xlen(self.keys.stream)))
        return max(0, int(length) - int(pending["pending"]))

    def queued_ids(self, offset: int = 0, length: int = -1) -> list[str]:
        """Task ids of unclaimed entries, oldest first, from ``offset`` (``length`` -1: all,
        as rq's ``get_job_ids`` reads its whole list). Reads the stream in pages."""
        stream = self.keys.stream
        try:
            claimed = {p["message_id"] for p in cast(Any, self.client.xpending_range(
                stream, GROUP, min="-", max="+", count=100_000))}
        except redis.ResponseError:
            claimed = set()
        ids: list[str] = []
        start: bytes | str = "-"
        skip = offset
        while length < 0 or len(ids) < length:
            rows: Any = self.client.xrange(stream, start, "+", count=1000)
            for entry_id, fields in rows:
                if entry_id in claimed:
                    continue
                if skip:
                    skip -= 1
                    continue
                ids.append(_task_id(fields.get(b"m", b"")))
                if 0 <= length <= len(ids):
                    break
            if len(rows) < 1000:
                break
            start = b"(" + rows[-1][0]
        return ids


def _finished(raw: bytes) -> str:
    try:
        ok = orjson.loads(raw).get("ok")
    except (orjson.JSONDecodeError, AttributeError):
        ok = False
    return "finished" if ok else "failed"


def _task_id(body: bytes) -> str:
    try:
        value = orjson.loads(body).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        value = None
    return value if isinstance(value, str) else "?"
