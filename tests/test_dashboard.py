"""The dashboard's reads (broker/snapshot.py), its sampler, its HTTP surface (auth, CSRF,
read-only by default, actions through Broker.dead_retry/dead_purge) and the exporter's
/metrics, parsed the way Prometheus would."""

from __future__ import annotations

import asyncio
import base64
import os
import select
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis as redis_lib

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
import httpx
from prometheus_client.parser import text_string_to_metric_families

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from taskq.broker import GROUP, Broker, heartbeat, snapshot
from taskq.broker.keys import NODES_KEY, QueueKeys
from taskq.dashboard import sampler as sampler_mod
from taskq.dashboard.app import create_app
from taskq.dashboard.metrics import Exposition
from taskq.local.embedded import EmbeddedRedis
from taskq.message import Entry, Report, TaskMessage, dead_letter, routing_of
from taskq.outcome import encode_error, encode_ok

AUTH = ("ops", "s3cret")


def enqueue(broker: Broker, n: int, start: int = 0, **kw: Any) -> list[str]:
    messages = [TaskMessage(id=f"t{i}", task="echo", args=[i], **kw) for i in range(start, start + n)]
    broker.enqueue([(m.encode(), None) for m in messages])
    return [m.id for m in messages]


def claim(broker: Broker, node: str, n: int) -> list[Entry]:
    rows = broker.client.xreadgroup(GROUP, node, {broker.keys.stream: ">"}, count=n)
    return [Entry.from_fields(eid, f) for eid, f in rows[0][1]] if rows else []


def report(entry: Entry, kind: str, **kw: Any) -> tuple[bytes, Report]:
    routing = routing_of(entry.body)
    assert routing is not None
    if kind == "ok":
        return entry.entry_id, Report("ok", routing, encode_ok(routing.task_id, "v"))
    if kind == "fail":
        error = encode_error(routing.task_id, ("ValueError", "bad", "tb"))
        return entry.entry_id, Report("fail", routing, error)
    if kind == "retry":
        due = str(kw.get("due_ms", int(time.time() * 1000) + 60_000)).encode()
        return entry.entry_id, Report("retry", routing, b"", entry.packed(entry.attempt + 1), due)
    return entry.entry_id, dead_letter(entry, kw.get("reason", "poison"))


@pytest.fixture
def broker(redis: redis_lib.Redis) -> Broker:
    b = Broker(redis, "q")
    b.ensure_group()
    return b


def make_dead(broker: Broker, n: int, start: int = 0, **kw: Any) -> None:
    enqueue(broker, n, start, **kw)
    entries = claim(broker, "n1", n)
    broker.complete("n1", [report(e, "dead", reason=f"reason {e.body[7:10].decode()}") for e in entries], 60)


# -- snapshot --------------------------------------------------------------------------


def test_snapshot_counts_every_state_of_a_queue(broker: Broker) -> None:
    enqueue(broker, 6)
    e = claim(broker, "n1", 4)
    broker.complete("n1", [report(e[0], "ok"), report(e[1], "dead"), report(e[2], "retry")], 60)
    # A second queue whose only waiting task was enqueued a minute ago (Redis's clock).
    old = QueueKeys("old")
    redis_now = broker.client.time()[0]
    broker.client.xadd(old.stream, {"m": b'{"id":"x","t":"echo","a":[]}'}, id=f"{(redis_now - 60) * 1000}-0")
    Broker(broker.client, "old").ensure_group()
    Broker(broker.client, "idle").ensure_group()

    snap = snapshot.take(broker.client)
    by = {q.name: q for q in snap.queues}
    assert sorted(by) == ["idle", "old", "q"]
    q = by["q"]
    assert (q.depth, q.in_flight, q.lag, q.delayed, q.dead) == (2, 1, 2, 1, 1)
    assert {k: q.counters.get(k) for k in ("enqueued", "done", "failed", "retried", "dead")} == {
        "enqueued": 6, "done": 1, "failed": 1, "retried": 1, "dead": 1}
    assert q.oldest_age is not None and 0 <= q.oldest_age < 10
    assert by["old"].oldest_age is not None and 59 <= by["old"].oldest_age < 70
    assert by["idle"].oldest_age is None and by["idle"].depth == 0
    assert abs(snap.time - time.time()) < 5 and snap.nodes_live == 0


def test_snapshot_nodes_with_and_without_a_process_table(redis: redis_lib.Redis) -> None:
    table = [{"slot": 0, "pid": 11, "state": "busy", "task": "echo", "task_id": "t1",
              "since": time.time() - 3, "done": 7, "rss": 10 << 20, "restarts": 1, "last_exit": "signal"}]
    heartbeat(redis, "new", {"host": "h1", "pid": 1, "procs": 2, "queues": "a,b", "processed": 5,
                             "failed": 0, "in_flight": 1, "procs_table": orjson.dumps(table).decode()}, 60)
    heartbeat(redis, "old", {"host": "h2", "pid": 2, "procs": 4, "queues": "a", "processed": 0,
                             "failed": 0, "in_flight": 0}, 60)
    heartbeat(redis, "gone", {"host": "h3", "pid": 3, "procs": 1, "queues": "a"}, 60)
    redis.zadd(NODES_KEY, {"gone": int((time.time() - 120) * 1000)})  # stale heartbeat
    snap = snapshot.take(redis)
    nodes = {n.id: n for n in snap.nodes}
    assert sorted(nodes) == ["new", "old"] and snap.nodes_live == 2
    assert nodes["new"].procs_table == table and nodes["new"].queues == ["a", "b"]
    assert nodes["old"].procs_table is None and nodes["old"].procs == 4
    assert 0 <= nodes["old"].heartbeat_age < 5


def test_dead_page_is_paginated_newest_first_and_never_unpickles(broker: Broker) -> None:
    make_dead(broker, 5)
    first, cursor = snapshot.dead_page(broker.client, "q", count=2)
    assert [r["task_id"] for r in first] == ["t4", "t3"] and cursor == first[-1]["id"]
    second, cursor = snapshot.dead_page(broker.client, "q", before=cursor, count=2)
    third, end = snapshot.dead_page(broker.client, "q", before=cursor, count=2)
    assert [r["task_id"] for r in second + third] == ["t2", "t1", "t0"] and end is None
    row = first[0]
    assert (row["task"], row["attempts"], row["node"], row["error_type"]) == (
        "echo", 1, "n1", "DeadLetteredError")
    assert row["reason"].startswith("reason") and "dead-lettered" in row["message"]
    assert abs(row["at"] - time.time()) < 10

    # A pickled payload is only measured; long arguments are cut to 2 KB.
    poison = b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."  # would run a command if unpickled
    body = orjson.dumps({"id": "p1", "t": "", "a": [], "p": base64.b64encode(poison).decode()})
    broker.enqueue([(body, b"sig")])
    enqueue(broker, 1, 100, kwargs={"blob": "x" * 10_000})
    broker.complete("n1", [report(e, "dead") for e in claim(broker, "n1", 2)], 60)
    rows, _ = snapshot.dead_page(broker.client, "q", count=2)
    by = {r["task_id"]: r for r in rows}
    assert by["p1"]["args"] == f"signed payload, {len(poison)} bytes"
    assert len(by["t100"]["args"].encode()) < snapshot.PREVIEW_LIMIT + 40
    assert by["t100"]["args"].endswith("bytes)")


def test_delayed_page_soonest_first_with_total(broker: Broker) -> None:
    enqueue(broker, 3)
    now_ms = int(time.time() * 1000)
    entries = claim(broker, "n1", 3)
    broker.complete("n1", [report(e, "retry", due_ms=now_ms + 1000 * (30 - i))
                           for i, e in enumerate(entries)], 60)
    rows, total = snapshot.delayed_page(broker.client, "q", count=2)
    assert total == 3 and [r["task_id"] for r in rows] == ["t2", "t1"]
    assert rows[0]["attempt"] == 2 and abs(rows[0]["due"] - (now_ms / 1000 + 28)) < 0.01
    rest, _ = snapshot.delayed_page(broker.client, "q", offset=2, count=2)
    assert [r["task_id"] for r in rest] == ["t0"]


def test_lookup_says_where_a_task_is(broker: Broker) -> None:
    enqueue(broker, 6, keep_result=True)
    e = claim(broker, "node-a", 5)
    broker.complete("node-a", [report(e[0], "ok"), report(e[1], "fail"), report(e[2], "retry"),
                               report(e[3], "dead")], 60)
    table = [{"slot": 0, "pid": 9, "state": "busy", "task": "echo", "task_id": "t4",
              "since": time.time() - 12}]
    heartbeat(broker.client, "node-a", {"procs_table": orjson.dumps(table).decode()}, 60)
    look = {t: snapshot.lookup(broker.client, ["other", "q"], t) for t in
            ("t0", "t1", "t2", "t3", "t4", "t5", "nope")}
    assert {t: v["state"] for t, v in look.items()} == {
        "t0": "done", "t1": "failed", "t2": "delayed", "t3": "dead", "t4": "in_flight",
        "t5": "queued", "nope": "unknown"}
    assert look["t0"]["detail"] == '"v"' and "ValueError: bad" in look["t1"]["detail"]
    assert look["t4"]["node"] == "node-a" and 11 <= look["t4"]["seconds"] < 20
    assert look["t4"]["detail"].startswith("in flight on node node-a for 1")
    assert look["t5"]["queue"] == "q"


def test_batch_progress(broker: Broker) -> None:
    messages = [TaskMessage(id=f"b{i}", task="echo", args=[i], batch="B1") for i in range(3)]
    broker.enqueue([(m.encode(), None) for m in messages], ("B1", 60, {}))
    e = claim(broker, "n1", 2)
    broker.complete("n1", [report(e[0], "ok"), report(e[1], "fail")], 60)
    assert snapshot.batch(broker.client, ["x", "q"], "B1") == {
        "id": "B1", "queue": "q", "total": 3, "done": 1, "failed": 1, "pending": 1}
    assert snapshot.batch(broker.client, ["q"], "nope") is None


# -- sampler and metrics ----------------------------------------------------------------


def test_one_sample_feeds_every_subscriber(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_take = snapshot.take
    monkeypatch.setattr(snapshot, "take", lambda c: calls.append(1) or real_take(c))
    enqueue(broker, 3)

    async def scenario() -> list[bytes | None]:
        sampler = sampler_mod.Sampler(broker.client, interval=1.0)
        queues = [sampler.subscribe() for _ in range(10)]
        await sampler.sample()
        got = [q.get_nowait() for q in queues]
        sampler.stop()
        return [*got, queues[0].get_nowait()]

    got = asyncio.run(scenario())
    assert len(calls) == 1  # ten pages, one round of Redis reads
    assert len({id(m) for m in got[:10]}) == 1 and got[10] is None
    view = orjson.loads(got[0] or b"")
    assert view["queues"][0]["depth"] == 3 and view["error"] is None


def test_throughput_rates_from_the_history(redis: redis_lib.Redis) -> None:
    s = sampler_mod.Sampler(redis, interval=1.0)
    for t, done, failed in [(0, 0, 0), (1, 10, 0), (2, 30, 1), (3, 5, 1)]:  # a reset at t=3
        s._history.append((1000.0 + t, {"q": (done, failed)}))
    assert s.rates("q", points=900) == ([10.0, 20.0, 0.0], [0.0, 1.0, 0.0])
    assert s.rates("missing") == ([], [])


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_names_labels_and_values(broker: Broker) -> None:
    enqueue(broker, 4)
    e = claim(broker, "n1", 3)
    broker.complete("n1", [report(e[0], "ok"), report(e[1], "ok"), report(e[2], "fail")], 60)
    Broker(broker.client, "other").ensure_group()
    text = Exposition().render(snapshot.take(broker.client)).decode()
    fam = families(text)
    assert set(fam) == {"taskq_exporter_redis_up", "taskq_queue_depth", "taskq_queue_in_flight",
                        "taskq_queue_lag", "taskq_queue_delayed", "taskq_queue_dead",
                        "taskq_queue_oldest_age_seconds", "taskq_queue_tasks", "taskq_queue_enqueued",
                        "taskq_nodes_live"}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fam.values() for s in f.samples}
    assert values[("taskq_queue_depth", (("queue", "q"),))] == 1
    assert values[("taskq_queue_tasks_total", (("outcome", "ok"), ("queue", "q")))] == 2
    assert values[("taskq_queue_tasks_total", (("outcome", "failed"), ("queue", "q")))] == 1
    assert values[("taskq_queue_enqueued_total", (("queue", "q"),))] == 4
    for f in fam.values():  # label sets: exactly these, and no more values than queues x outcomes
        for s in f.samples:
            assert set(s.labels) <= {"queue", "outcome"}
        assert len(f.samples) <= 2 * 5
    assert Exposition().render(None).decode().count("taskq_exporter_redis_up 0.0") == 1


# -- the HTTP surface ---------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[redis_lib.Redis]:
    import fakeredis

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


def app_client(fake: redis_lib.Redis, **kw: Any) -> TestClient:
    return TestClient(create_app(fake, **kw), base_url="http://testserver")


def test_credentials_required_except_for_healthz(fake: redis_lib.Redis) -> None:
    with app_client(fake, auth="ops:s3cret", prefix="/taskq") as c:
        assert c.get("/taskq/").status_code == 401
        assert c.get("/taskq/").headers["www-authenticate"].startswith("Basic")
        assert c.get("/taskq/", auth=("ops", "wrong")).status_code == 401
        page = c.get("/taskq/", auth=AUTH)
        assert page.status_code == 200 and 'data-prefix="/taskq"' in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
        assert c.get("/taskq/metrics").status_code == 401
        assert c.get("/taskq/healthz").status_code in (200, 503)  # exempt: never 401
        assert c.get("/taskq", auth=AUTH, follow_redirects=False).headers["location"] == "/taskq/"
        assert c.get("/taskq/static/app.js", auth=AUTH).status_code == 200
    with app_client(fake, auth="tok123") as c:
        assert c.get("/api/snapshot").status_code == 401
        assert c.get("/api/snapshot", headers={"authorization": "Bearer tok123"}).status_code == 200


def test_read_only_by_default_and_actions_need_post_and_the_page_header(fake: redis_lib.Redis) -> None:
    broker = Broker(fake, "q")
    broker.ensure_group()
    make_dead(broker, 3)
    (row, *_), _ = snapshot.dead_page(fake, "q")
    hdr = {"x-taskq-action": "1"}
    with app_client(fake) as c:
        refused = c.post("/api/queues/q/dead/retry", json={"ids": [row["id"]]}, headers=hdr)
        assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]
    with app_client(fake, allow_actions=True) as c:
        assert c.get("/api/queues/q/dead/retry").status_code == 405  # never as GET
        assert c.post("/api/queues/q/dead/retry", json={"ids": [row["id"]]}).status_code == 403
        cross = c.post("/api/queues/q/dead/retry", json={"ids": [row["id"]]},
                       headers={**hdr, "origin": "http://evil.example"})
        assert cross.status_code == 403
        assert c.post("/api/queues/q/dead/purge", json={"confirm": "nope"}, headers=hdr).status_code == 400
        assert c.post("/api/queues/q/dead/retry", json={"all": True}, headers=hdr).status_code == 400
        assert fake.xlen(broker.keys.dead) == 3  # nothing refused changed anything
        ok = c.post("/api/queues/q/dead/retry", json={"ids": [row["id"]]}, headers=hdr)
        assert ok.json() == {"requeued": 1}
        assert row["id"] not in [r["id"] for r in c.get("/api/queues/q/dead").json()["rows"]]
        assert fake.xlen(broker.keys.stream) == 1
        assert c.post("/api/queues/q/dead/purge", json={"confirm": "q"}, headers=hdr).json() == {"purged": 2}
        assert c.get("/api/queues/bad:name/dead").status_code == 400
        assert c.get("/api/queues/q/dead?count=x").status_code == 400


def test_api_reads(fake: redis_lib.Redis) -> None:
    broker = Broker(fake, "q")
    broker.ensure_group()
    enqueue(broker, 2)
    with app_client(fake) as c:
        assert c.get("/api/tasks/t1").json()["state"] == "queued"
        assert c.get("/api/batches/none").status_code == 404
        assert c.get("/api/queues/q/delayed").json() == {"rows": [], "total": 0}
        deadline = time.monotonic() + 10
        while not c.get("/api/snapshot").json()["queues"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the lifespan's sampler takes its first sample
        assert c.get("/api/snapshot").json()["queues"][0]["depth"] == 2
        assert c.get("/metrics").text.count('taskq_queue_depth{queue="q"} 2.0') == 1


# -- the exporter, a real process ---------------------------------------------------------


def start_server(url: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m taskq <args> --url URL --port 0`; returns it and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "taskq", *args, "--url", url, "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if "serving " in line:
                return proc, line.split("serving ", 1)[1].strip().rstrip("/")
            if not line:
                break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.timeout(60)
def test_exporter_serves_what_was_enqueued(redis_url: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    for q, n in (("alpha", 3), ("beta", 5)):
        b = Broker(client, q)
        b.ensure_group()
        enqueue(b, n)
    claim(Broker(client, "beta"), "n1", 2)
    proc, base = start_server(redis_url, "exporter")
    try:
        resp = httpx.get(base + "/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        fam = families(resp.text)
        depth = {s.labels["queue"]: s.value for s in fam["taskq_queue_depth"].samples}
        assert depth == {"alpha": 3, "beta": 3}
        in_flight = {s.labels["queue"]: s.value for s in fam["taskq_queue_in_flight"].samples}
        assert in_flight == {"alpha": 0, "beta": 2}
        enq = {s.labels["queue"]: s.value for s in fam["taskq_queue_enqueued"].samples}
        assert enq == {"alpha": 3, "beta": 5}
        outcomes = {s.labels["outcome"] for s in fam["taskq_queue_tasks"].samples}
        assert outcomes == {"ok", "failed", "retried", "dead", "suppressed"}
        assert fam["taskq_exporter_redis_up"].samples[0].value == 1
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        assert httpx.get(base + "/", timeout=10).status_code == 404  # no UI in the exporter
    finally:
        stop_server(proc)
        client.close()


@pytest.mark.timeout(60)
def test_exporter_health_follows_redis(embedded_server: EmbeddedRedis) -> None:
    proc, base = start_server(embedded_server.url, "exporter")
    try:
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        embedded_server.kill()
        deadline = time.monotonic() + 20
        while httpx.get(base + "/healthz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "healthz never went 503"
            time.sleep(0.2)
        assert "taskq_exporter_redis_up 0.0" in httpx.get(base + "/metrics", timeout=10).text
    finally:
        stop_server(proc)


def test_cli_bad_input_is_one_line_exit_2() -> None:
    for args in (["dashboard", "--url-prefix", "x/"], ["dashboard", "--auth", ":pw"],
                 ["exporter", "--url", "http://nope"]):
        done = subprocess.run([sys.executable, "-m", "taskq", *args, "--port", "0"],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "TASKQ_URL": ""})
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_monitoring_files_use_only_metrics_that_exist() -> None:
    """The alert rules and the Grafana dashboard name exporter metrics (or the node's
    documented taskq_pool_process_exits_total), and both files parse."""
    import json
    import re
    from pathlib import Path

    from taskq.broker.snapshot import QueueStats, Snapshot

    root = Path(__file__).parent.parent / "deploy" / "monitoring"
    grafana = (root / "grafana-dashboard.json").read_text()
    alerts = (root / "prometheus-alerts.yaml").read_text()
    json.loads(grafana)
    snap = Snapshot(0.0, [QueueStats("q", 0, 0, 0, 0, 0, None, {})], [], 0)
    exported = {s.name for f in text_string_to_metric_families(Exposition().render(snap).decode())
                for s in f.samples}
    used = set(re.findall(r"\btaskq_[a-z_]+", grafana + alerts))
    assert used - exported == {"taskq_pool_process_exits_total"}
    assert "alert: TaskqNoLiveNode" in alerts and "taskq_queue_oldest_age_seconds >" in alerts
