"""``taskq info``: queues with the oldest waiting task's age and rates, live nodes with the
process table their heartbeat publishes, and ``--json`` for scripts (real server: the
CLI connects by URL)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis as redis_lib
from click.testing import CliRunner

from taskq.broker import Broker, heartbeat, snapshot
from taskq.broker.keys import QueueKeys
from taskq.cli import cli
from taskq.info import rates_between
from taskq.message import TaskMessage

pytestmark = pytest.mark.timeout(30)

ROW = {"slot": 0, "pid": 4242, "state": "busy", "task": "echo", "task_id": "t-running",
       "since": 0.0, "done": 17, "rss": 48 << 20, "restarts": 2, "last_exit": "signal"}


@pytest.fixture
def cluster(redis_url: str) -> Iterator[redis_lib.Redis]:
    """Queue q1 with two waiting tasks; one live node publishing a busy process."""
    client = redis_lib.Redis.from_url(redis_url)
    broker = Broker(client, "q1")
    broker.ensure_group()
    broker.enqueue([(TaskMessage(uuid.uuid4().hex, "echo", [i]).encode(), None) for i in (1, 2)])
    table = [{**ROW, "since": time.time() - 3.0}]
    heartbeat(client, "host-a:4000:abc", {
        "host": "host-a", "pid": 4000, "procs": 1, "queues": "q1", "processed": 17, "failed": 1,
        "in_flight": 1, "procs_table": orjson.dumps(table).decode()}, ttl=60)
    yield client
    client.close()


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--url", url, "info", *args])
    return result.exit_code, result.stdout, result.stderr


def test_info_text_has_oldest_age_rates_and_the_process_table(
        redis_url: str, cluster: redis_lib.Redis) -> None:
    code, out, _ = invoke(redis_url, "--interval", "0.1")
    assert code == 0, out
    header, q1 = out.splitlines()[:2]
    assert header.split() == ["queue", "queued", "in-flight", "delayed", "done", "failed",
                              "dead", "oldest", "done/s", "failed/s"]
    cols = q1.split()
    assert cols[:2] == ["q1", "2"] and cols[-2:] == ["0.0", "0.0"]
    assert cols[7].endswith("s") and float(cols[7][:-1]) < 10  # the oldest waiting task
    assert "1 live node(s)" in out and "host-a:4000:abc  procs=1 queues=q1" in out
    [row] = [line for line in out.splitlines() if "t-running" in line]
    fields = row.split()
    assert fields[:4] == ["0", "4242", "busy", "echo"] and fields[-3:] == ["48.0", "2", "signal"]
    assert fields[6] == "17" and fields[5].endswith("s") and 2.0 <= float(fields[5][:-1]) < 10


def test_info_json(redis_url: str, cluster: redis_lib.Redis) -> None:
    code, out, _ = invoke(redis_url, "--json", "--interval", "0")
    assert code == 0, out
    data = json.loads(out)
    [q] = data["queues"]
    assert (q["name"], q["depth"], q["in_flight"], q["dead"]) == ("q1", 2, 0, 0)
    assert q["oldest_age"] is not None and 0 <= q["oldest_age"] < 10
    assert "done_rate" not in q  # --interval 0: one sample, no rates
    [node] = data["nodes"]
    assert data["nodes_live"] == 1 and node["procs_table"][0]["task_id"] == "t-running"
    assert node["procs_table"][0]["restarts"] == 2


def test_rates_come_from_two_snapshots(redis_url: str, cluster: redis_lib.Redis) -> None:
    first = snapshot.take(cluster)
    cluster.hincrby(QueueKeys("q1").stats, "done", 30)
    cluster.hincrby(QueueKeys("q1").stats, "failed", 3)
    time.sleep(0.05)  # two samples must be apart in time: there is no event to wait on
    second = snapshot.take(cluster)
    done, failed = rates_between(first, second)["q1"]
    dt = second.time - first.time
    assert done == pytest.approx(30 / dt) and failed == pytest.approx(3 / dt)


def test_info_bad_interval_is_one_line(redis_url: str) -> None:
    code, _, err = invoke(redis_url, "--interval", "-1")
    assert code == 2 and err == "taskq: error: --interval must be >= 0\n"
