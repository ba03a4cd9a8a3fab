"""End to end: a real `taskq worker` subprocess, producers from the CLI and from Python."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker import Broker
from taskq.signing import sign

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def taskq_cmd(url: str, *args: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskq", "--url", url, *args], env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def worker(redis_url: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "2",
         "--import", "e2e_tasks", "--import", "taskq.tasks",
         "--init", "e2e_tasks:init_worker", "--init-args", '[3, "cfg"]'],
        env=ENV, stderr=subprocess.PIPE, text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.timeout(120)
def test_worker_serves_cli_and_python_producers_then_stops_cleanly(
    redis_url: str, worker: subprocess.Popen[str]
) -> None:
    # CLI: split into chunks, progress on stderr, total on stdout.
    done = taskq_cmd(redis_url, "enqueue", "primes", "0", "50000")
    assert (done.returncode, done.stdout) == (0, "5133\n"), done.stderr
    done = taskq_cmd(redis_url, "enqueue", "primes", "0", "40000", "--chunk-size", "7000")
    assert done.stdout == "4203\n"

    # --no-wait prints a batch id; `taskq result` reads it later.
    batch_id = taskq_cmd(redis_url, "enqueue", "primes", "0", "30000", "--no-wait").stdout.strip()
    with taskq.Client(redis_url) as client:
        client.batch(batch_id).wait(timeout=30)
    assert taskq_cmd(redis_url, "result", batch_id).stdout == "3245\n"

    with taskq.Client(redis_url) as client:
        # Python: futures, the initializer's per-process config, remote errors.
        fut = client.submit("primes", 0, 10_000)
        assert fut.result(timeout=30) == 1229
        value, label, same_process = client.submit("e2e.scale", 7).result(timeout=30)
        assert (value, label, same_process) == (21, "cfg", True)
        assert list(client.map("primes", [0, 10_000], [10_000, 20_000])) == [1229, 1033]
        with pytest.raises(taskq.TaskError) as info:
            client.submit("e2e.divide", 1, 0).result(timeout=30)
        assert info.value.type_name == "ZeroDivisionError"
        assert "a / b" in info.value.remote_traceback
        # Fire-and-forget: nothing stored, completion counted per batch and per queue.
        task_id = client.send("echo", "a@test.com")
        batch = client.send_many("echo", [[e] for e in ["a", "b", "c"]])
        status = batch.wait(timeout=30)
        assert (status.done, status.failed) == (3, 0)
        assert client.result(task_id) is None
        # A single task's result, read later by id.
        fut = client.submit("echo", {"k": [1, 2]})
        fut.result(timeout=30)
        assert taskq_cmd(redis_url, "result", fut.task_id).stdout == '{"k": [1, 2]}\n'  # type: ignore[attr-defined]

    info_out = taskq_cmd(redis_url, "info").stdout
    assert "default" in info_out and "1 live node(s)" in info_out

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    stderr = worker.stderr.read() if worker.stderr else ""
    assert "Traceback" not in stderr


class _Touch:
    """What an attacker would put in a pickle: unpickling it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.path,))


def _pickle_entry(task_id: str, payload: bytes, secret: bytes | None) -> dict[str, bytes]:
    body = json.dumps({"id": task_id, "t": "", "a": [], "kr": 1,
                       "p": base64.b64encode(payload).decode()}).encode()
    return {"m": body, **({"s": sign(secret, "default", body)} if secret is not None else {})}


@pytest.mark.timeout(60)
def test_forged_pickles_and_bad_messages_are_dead_lettered_and_never_run(
    redis_url: str, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(_Touch(canary)))  # the payload is live: loading it writes a file
    assert canary.exists()
    unsigned, forged, by_name = tmp_path / "unsigned", tmp_path / "forged", tmp_path / "system"
    client = redis_lib.Redis.from_url(redis_url)
    broker = Broker(client, "default")
    broker.ensure_group()
    stream = broker.keys.stream
    client.xadd(stream, _pickle_entry("unsigned", pickle.dumps(_Touch(unsigned)), None))
    client.xadd(stream, _pickle_entry("forged", pickle.dumps(_Touch(forged)), b"not the secret" * 4))
    client.xadd(stream, {"m": json.dumps({"id": "system", "t": "os.system", "kr": 1,
                                          "a": [f"touch {by_name}"]}).encode()})
    client.xadd(stream, {"m": b"\xff not json"})
    client.xadd(stream, {"junk": b"no envelope at all"})
    with taskq.Client(redis_url) as producer:
        good = producer.submit("primes", 0, 100)
        # A burst node that has the real secret: it must refuse what the secret did not sign.
        done = taskq_cmd(redis_url, "worker", "--procs", "1", "--burst",
                         env={**ENV, "TASKQ_SECRET": "the real secret" * 3}, timeout=50)
        assert done.returncode == 0, done.stderr
        assert good.result(timeout=10) == 25  # served alongside the bad entries
        why = {}
        for task_id in ("unsigned", "forged", "system"):
            outcome = producer.result(task_id)  # kr=1: the dead-letter outcome is kept
            assert outcome is not None, task_id
            with pytest.raises(taskq.DeadLetteredError) as info:
                outcome.result()
            why[task_id] = str(info.value)
    assert not unsigned.exists() and not forged.exists() and not by_name.exists()
    assert "dead-lettered: untrusted payload: payload is not signed" in why["unsigned"]
    assert "dead-lettered: untrusted payload: payload signature does not match" in why["forged"]
    assert "dead-lettered: unknown task 'os.system'" in why["system"]
    reasons = sorted(f[b"reason"].decode() for _, f in broker.dead_entries())
    assert len(reasons) == 5, reasons
    assert sum("untrusted payload" in r for r in reasons) == 2, reasons
    assert sum("malformed message" in r for r in reasons) == 2, reasons
    out = taskq_cmd(redis_url, "dead", "list").stdout
    assert out.count("\n") == 5


@pytest.mark.timeout(120)
def test_taskq_run_on_the_embedded_redis() -> None:
    env = {k: v for k, v in ENV.items() if k != "TASKQ_URL"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "taskq", "run", "primes", "0", "50000", "--procs", "2"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert (done.returncode, done.stdout) == (0, "5133\n"), done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


@pytest.mark.timeout(60)
def test_burst_worker_exits_when_the_queue_is_empty(redis_url: str) -> None:
    with taskq.Client(redis_url) as client:
        batch = client.send_many("primes", [[i, i + 1000] for i in range(0, 20_000, 1000)])
    done = taskq_cmd(redis_url, "worker", "--procs", "2", "--burst", timeout=50)
    assert done.returncode == 0, done.stderr
    with taskq.Client(redis_url) as client:
        assert client.batch(batch.id).status().done == 20
