"""Node metrics and health: ``--metrics [HOST:]PORT``, /metrics, /healthz, the heartbeat's
process table, exit reasons, and the worker's log lines.

In process on fakeredis (``Node(settings, client=...)`` stepped by the test) for the
counting; a real ``python -m taskq worker --metrics`` subprocess on the real server for
what crosses processes: a SIGKILLed pool process, a hard-killed task, SIGSTOP → 503.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest
import redis as redis_lib
from node_helpers import enqueue, step_until
from prometheus_client.parser import text_string_to_metric_families

import taskq
from taskq.broker.keys import node_key
from taskq.config import Settings, parse_metrics
from taskq.errors import ConfigError, TaskError
from taskq.node.logs import JsonFormatter
from taskq.node.metrics import MAX_TASK_LABELS, OTHER, NodeMetrics
from taskq.node.node import Node
from taskq.node.pool import Job, PoolInitError, SupervisedPool

pytestmark = pytest.mark.timeout(60)
TESTS_DIR = Path(__file__).resolve().parent

EXPECTED = {
    "taskq_tasks_claimed": {"queue"},
    "taskq_tasks_completed": {"queue", "task", "outcome"},
    "taskq_task_duration_seconds": {"queue", "task"},
    "taskq_task_queue_wait_seconds": {"queue"},
    "taskq_tasks_in_flight": {"queue"},
    "taskq_pool_processes": {"state"},
    "taskq_pool_process_exits": {"reason"},
    "taskq_pool_process_rss_bytes": {"slot"},
    "taskq_leases_lost": set(),
    "taskq_tasks_reclaimed": set(),
    "taskq_redis_command_seconds": {"op"},
    "taskq_redis_errors": {"op"},
}
ALLOWED = {  # every label's values are bounded; these are the fixed sets
    "outcome": {"ok", "failed", "retried", "dead", "suppressed"},
    "state": {"busy", "idle", "starting"},
    "reason": {"crash", "signal", "oom", "timeout", "recycle_tasks", "recycle_memory",
               "init_failure", "cancel"},
    "op": {"claim", "complete", "renew", "reclaim", "promote", "heartbeat"},
}


@taskq.task(name="tests.metrics.add")
def add(a: int, b: int) -> int:
    return a + b


def parse(text: str | bytes) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    """Family name → [(labels, value, sample name)]; label sets are checked here too."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.labels, s.value, s.name) for s in family.samples]
    return out


def value(fams: dict[str, Any], family: str, suffix: str = "", **labels: str) -> float:
    return sum(v for lab, v, name in fams[family] if name == family + suffix
               and all(lab.get(k) == want for k, want in labels.items()))


def check_shape(fams: dict[str, Any]) -> None:
    """The names, each one's label set, and no label with a value outside its set."""
    assert set(EXPECTED) <= set(fams), sorted(set(EXPECTED) - set(fams))
    for name, labels in EXPECTED.items():
        for lab, _, _ in fams[name]:
            assert set(lab) - {"le"} == labels, (name, lab)
            for key, allowed in ALLOWED.items():
                if key in lab:
                    assert lab[key] in allowed, (name, lab)
    for lab, _, _ in fams["taskq_pool_process_rss_bytes"]:
        assert 0 <= int(lab["slot"]) < 8
    forbidden = {"node", "host", "pid", "instance"}
    assert not any(forbidden & set(lab) for rows in fams.values() for lab, _, _ in rows)


# -- config ---------------------------------------------------------------------------


def test_parse_metrics_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_metrics("9808") == ("127.0.0.1", 9808)  # never every interface by default
    assert parse_metrics("0.0.0.0:9808") == ("0.0.0.0", 9808)
    assert parse_metrics("[::1]:0") == ("::1", 0)
    for bad in ("", "abc", "host:", ":9808", "70000", "-1", "host:x"):
        with pytest.raises(ConfigError, match=r"\[HOST:\]PORT"):
            parse_metrics(bad)
    monkeypatch.setenv("TASKQ_METRICS", "10.0.0.1:9000")
    assert Settings.from_env().metrics == ("10.0.0.1", 9000)
    monkeypatch.setenv("TASKQ_METRICS", "nope")
    with pytest.raises(ConfigError, match="TASKQ_METRICS='nope'"):
        Settings.from_env()
    monkeypatch.delenv("TASKQ_METRICS")
    assert Settings.from_env().metrics is None  # off unless asked


def test_task_label_is_capped() -> None:
    m = NodeMetrics(["q"])
    labels = {m.task_label(f"t{i}") for i in range(MAX_TASK_LABELS + 50)}
    assert len(labels) == MAX_TASK_LABELS + 1 and OTHER in labels
    assert m.task_label("t0") == "t0" and m.task_label("new") == OTHER
    assert m.task_label("") == "_unknown"


# -- in process, on fakeredis ----------------------------------------------------------


@pytest.fixture
def r() -> Iterator[redis_lib.Redis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture
def node(r: redis_lib.Redis) -> Iterator[Node]:
    settings = Settings(url="redis://fake/0", procs=1, lease=1.0, max_message_bytes=4096,
                        metrics=("127.0.0.1", 0))
    n = Node(settings, client=r, node_id="node-m")
    n.start()
    yield n
    n.close()


def test_counts_in_process(r: redis_lib.Redis, node: Node) -> None:
    for i in range(3):
        enqueue(r, "tests.metrics.add", i, 1)
    enqueue(r, "tests.metrics.add", "x" * 5000, 1)  # over max_message_bytes: dead-lettered
    enqueue(r, "tests.metrics.add", "a")  # wrong arguments: fails
    step_until(node, lambda: node.processed == 4 and node.unreported_count == 0, "4 reports")
    fams = parse(node.telemetry.render())
    check_shape(fams)
    assert value(fams, "taskq_tasks_claimed", "_total", queue="default") == 5
    task = "tests.metrics.add"
    assert value(fams, "taskq_tasks_completed", "_total", task=task, outcome="ok") == 3
    assert value(fams, "taskq_tasks_completed", "_total", task=task, outcome="failed") == 1
    assert value(fams, "taskq_tasks_completed", "_total", outcome="dead") == 1
    assert value(fams, "taskq_task_duration_seconds", "_count", task=task) == 4  # ran in a child
    assert value(fams, "taskq_task_duration_seconds", "_bucket", task=task, le="+Inf") == 4
    assert value(fams, "taskq_task_queue_wait_seconds", "_count", queue="default") == 5
    assert 0 <= value(fams, "taskq_task_queue_wait_seconds", "_sum") < 10
    assert value(fams, "taskq_tasks_in_flight", queue="default") == 0
    assert value(fams, "taskq_pool_processes", state="idle") == 1
    assert value(fams, "taskq_pool_process_rss_bytes", slot="0") > 1 << 20
    assert value(fams, "taskq_redis_command_seconds", "_count", op="complete") >= 1
    assert value(fams, "taskq_redis_command_seconds", "_count", op="renew") >= 1
    assert value(fams, "taskq_pool_process_exits", "_total") == 0


def test_metrics_and_healthz_over_http(r: redis_lib.Redis, node: Node) -> None:
    """The server process asks the node loop over its pipe: the loop must keep turning."""
    assert node.telemetry.health is not None
    base = f"http://127.0.0.1:{node.telemetry.health.port}"
    got: dict[str, tuple[int, bytes]] = {}

    def fetch(path: str) -> None:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                got[path] = (resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            got[path] = (exc.code, exc.read())

    node.step(0)  # one turn (the lease renewal is due at once)
    threads = [threading.Thread(target=fetch, args=(p,)) for p in ("/metrics", "/healthz", "/x")]
    for t in threads:
        t.start()
    step_until(node, lambda: len(got) == 3, "the HTTP answers")
    for t in threads:
        t.join()
    assert got["/healthz"] == (200, b"ok\n")
    assert got["/x"][0] == 404
    status, body = got["/metrics"]
    assert status == 200
    check_shape(parse(body))


def test_heartbeat_publishes_the_process_table(r: redis_lib.Redis, node: Node) -> None:
    step_until(node, lambda: node.pool.processes()[0].state == "idle", "the pool to be ready")
    node.schedule.make_due("heartbeat")
    node.step(0)
    raw: Any = r.hget(node_key("node-m"), "procs_table")
    [row] = orjson.loads(raw)
    assert sorted(row) == sorted(["slot", "pid", "state", "task", "task_id", "since", "done",
                                  "rss", "restarts", "last_exit"])  # what the dashboard reads
    assert (row["slot"], row["pid"], row["state"]) == (0, node.pool.pids[0], "idle")
    assert (row["task"], row["task_id"], row["since"], row["done"]) == (None, None, None, 0)
    assert row["restarts"] == 0 and row["last_exit"] is None and row["rss"] > 1 << 20


def test_busy_row_names_its_task(r: redis_lib.Redis, node: Node, tmp_path: Path) -> None:
    """A running task shows in the table with its name, id and start time."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    task_id = enqueue(r, "tests.metrics.wait_fifo", str(fifo))
    step_until(node, lambda: node.pool.processes()[0].state == "busy", "the task to start")
    node.schedule.make_due("heartbeat")
    node.step(0)
    raw: Any = r.hget(node_key("node-m"), "procs_table")
    [row] = orjson.loads(raw)
    assert (row["state"], row["task"], row["task_id"]) == ("busy", "tests.metrics.wait_fifo",
                                                           task_id)
    assert abs(row["since"] - time.time()) < 10
    fams = parse(node.telemetry.render())
    assert value(fams, "taskq_pool_processes", state="busy") == 1
    assert value(fams, "taskq_tasks_in_flight", queue="default") == 1
    with open(fifo, "wb") as f:  # let it finish
        f.write(b"g")
    step_until(node, lambda: node.processed == 1 and node.unreported_count == 0, "the report")
    node.schedule.make_due("heartbeat")
    node.step(0)
    [row] = orjson.loads(r.hget(node_key("node-m"), "procs_table"))  # type: ignore[arg-type]
    assert row["done"] == 1 and row["state"] == "idle" and row["task"] is None


@taskq.task(name="tests.metrics.wait_fifo")
def wait_fifo(path: str) -> str:
    with open(path, "rb") as f:
        f.read(1)
    return "done"


def _pool_run(op: Any) -> Any:
    """A pool runner: ``pid``; ``exit`` (os._exit(3)); ``alloc`` N bytes, kept."""
    if op == "exit":
        os._exit(3)
    if isinstance(op, int):
        _kept.append(b"x" * op)
    return os.getpid()


_kept: list[bytes] = []


def _rss_self() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _init_fail() -> None:
    raise RuntimeError("no")


def _drain(pool: SupervisedPool, n: int, until: Callable[[], bool]) -> None:
    deadline, got = time.monotonic() + 20, 0
    while got < n or not until():
        assert time.monotonic() < deadline, (got, pool.slots.exits)
        got += len(pool.poll(0.05))


def test_pool_counts_exits_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    """crash, recycle_tasks, recycle_memory (init_failure: below); signal and timeout go
    through a real worker in test_worker_metrics_exits_and_healthz."""
    caplog.set_level(logging.INFO, "taskq.node.pool")
    with SupervisedPool(1, _pool_run, max_tasks_per_child=2) as pool:
        pool.submit([Job(i, "pid") for i in range(4)])
        _drain(pool, 4, lambda: pool.slots.exits["recycle_tasks"] >= 1 and len(pool.pids) == 1)
        pool.submit([Job("x", "exit")])
        _drain(pool, 1, lambda: pool.slots.exits["crash"] == 1)
        [info] = pool.processes()
        assert info.slot == 0 and info.restarts >= 2 and info.last_exit == "crash"
        assert info.done >= 4
    with SupervisedPool(1, _pool_run, max_memory_per_child=_rss_self() + (64 << 20)) as pool:
        pool.submit([Job("big", 128 << 20), Job("next", "pid")])
        _drain(pool, 2, lambda: pool.slots.exits["recycle_memory"] == 1)
    assert "reason crash: it exited with code 3 while running a task" in caplog.text
    assert "reason recycle_tasks" in caplog.text and "reason recycle_memory" in caplog.text
    with SupervisedPool(1, _pool_run, initializer=_init_fail) as pool:
        with pytest.raises(PoolInitError):
            _drain(pool, 0, lambda: False)
        assert pool.slots.exits["init_failure"] >= 1


def test_json_log_lines() -> None:
    record = logging.LogRecord("taskq.node.pool", logging.WARNING, __file__, 1,
                               "pool process %d exited", (42,), None)
    record.reason, record.slot = "signal", 0
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "taskq.node.pool"
    assert line["message"] == "pool process 42 exited"
    assert (line["reason"], line["slot"]) == ("signal", 0) and line["ts"].endswith("+00:00")


# -- a real worker subprocess on the real server ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def wait_for(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    env = {**os.environ, "TASKQ_REL_LOG": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    for var in ("TASKQ_URL", "TASKQ_QUEUE", "TASKQ_LEASE", "TASKQ_METRICS"):
        env.pop(var, None)
    log_path = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "1",
           "--import", "reliability_tasks", "--hard-timeout-grace", "0.2",
           "--metrics", f"127.0.0.1:{port}", "--log-format", "json"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}", log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_worker_metrics_exits_and_healthz(
        redis_url: str, worker: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    proc, base, log_path = worker
    wait_for(lambda: get(base + "/healthz")[0] == 200 or proc.poll() is not None, "/healthz 200")
    assert proc.poll() is None, log_path.read_text()
    with taskq.Client(redis_url) as client:
        assert client.submit("rel.once", "ok").result(timeout=20) > 0
        with pytest.raises(TaskError, match=r"WorkerLost|killed by signal"):
            client.submit("rel.crash", "k", "kill").result(timeout=20)  # SIGKILLs its process
        with pytest.raises(TaskError, match="TaskTimeoutError"):
            client.submit("rel.stubborn", "s", 30).result(timeout=20)  # hard-killed at 0.5 s
    status, body = get(base + "/metrics")
    assert status == 200
    fams = parse(body)
    check_shape(fams)
    exits = {lab["reason"]: v for lab, v, _ in fams["taskq_pool_process_exits"]}
    assert exits == {**dict.fromkeys(ALLOWED["reason"], 0.0), "signal": 1.0, "timeout": 1.0}
    assert value(fams, "taskq_tasks_completed", "_total", outcome="ok") == 1
    assert value(fams, "taskq_tasks_completed", "_total", outcome="failed") == 2
    assert value(fams, "taskq_tasks_claimed", "_total") == 3

    # One line per event, with the reason and the task.
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    events = {(line.get("reason"), line.get("event")) for line in lines}
    assert ("signal", None) in events and ("timeout", None) in events, lines
    assert (None, "hard-killed at its time limit") in events and (None, "lost") in events

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: get(base + "/healthz")[0] == 503, "/healthz 503 while stopped", 15)
        status, text = get(base + "/healthz")
        assert b"stopped or wedged" in text
        assert get(base + "/metrics")[0] == 503  # the loop cannot answer
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: get(base + "/healthz")[0] == 200, "/healthz 200 again", 15)
    assert get(base + "/metrics")[0] == 200


def test_bad_metrics_option_is_one_line(redis_url: str) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "worker",
                               "--procs", "1", *args], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **(env or {})})

    out = run("--metrics", "nope")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "is not [HOST:]PORT" in out.stderr
    out = run(env={"TASKQ_METRICS": "1.2.3.4:x"})
    assert out.returncode == 2 and "TASKQ_METRICS" in out.stderr and "Traceback" not in out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = run("--metrics", f"127.0.0.1:{taken.getsockname()[1]}", "--burst")
    assert out.returncode == 2 and "cannot serve metrics on 127.0.0.1:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
