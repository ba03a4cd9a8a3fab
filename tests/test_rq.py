"""taskq.rq (rq's producer API over taskq) and `taskq rq import`, against real rq.

Anything with a worker (rq's SimpleWorker in-process, a taskq node subprocess) runs on
the real server (`redis_url`); the producer-only checks run on both backends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import rq_tasks

import taskq.rq
from taskq.errors import SignatureError
from taskq.rq import importer

rq = pytest.importorskip("rq")
from rq.serializers import JSONSerializer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TASKQ_URL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_node(url: str, queue: str, timeout: float = 45.0) -> None:
    """A real taskq node in burst mode until its queue (and retries) are done."""
    done = subprocess.run(
        [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "1", "--burst",
         "--queue", queue, "--import", "rq_tasks", "--log-level", "warning"],
        env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def start_node(url: str, queue: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", "1", "--burst",
         "--queue", queue, "--import", "rq_tasks", "--log-level", "warning"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # the state lives in another process and Redis: poll it


def taskq_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskq", "--url", url, *args], env=_env(),
                          capture_output=True, text=True, timeout=45, check=False)


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKQ_SECRET", raising=False)


# -- the same producer code on rq and on taskq ------------------------------------------


def producer(api: Any, conn: redis_lib.Redis, flag: Path) -> dict[str, Any]:
    """rq-shaped producer code, run unchanged with ``api`` = the rq module or taskq.rq."""
    q = api.Queue("parity", connection=conn)
    jobs = {
        "primes": q.enqueue(rq_tasks.count_primes, 0, 10_000, job_timeout=60, result_ttl=500),
        "explicit-id": q.enqueue(rq_tasks.add, 2, 3, job_id="add-job"),
        "call": q.enqueue_call(rq_tasks.add, args=(4,), kwargs={"b": 5}, timeout="1m"),
        "by-path": q.enqueue("rq_tasks.add", 10, 20),
        "fails": q.enqueue(rq_tasks.fail, "boom", failure_ttl=300),
        "retried": q.enqueue(rq_tasks.flaky, str(flag), retry=api.Retry(max=1)),
    }
    many = q.enqueue_many([api.Queue.prepare_data(rq_tasks.add, (i, i)) for i in range(3)])
    jobs.update({f"many-{i}": job for i, job in enumerate(many)})
    return {"q": q, "jobs": jobs, "len": len(q), "count": q.count,
            "ids": q.job_ids == [j.id for j in jobs.values()],
            "queued": {k: j.get_status() for k, j in jobs.items()}}


def outcomes(api: Any, conn: redis_lib.Redis, jobs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, job in jobs.items():
        fetched = api.job.Job.fetch(job.id, connection=conn)
        latest = job.latest_result()
        exc = job.exc_info
        out[key] = (str(job.get_status().value), job.is_finished, job.is_failed,
                    job.return_value(), latest.type.name,
                    exc.strip().splitlines()[-1] if exc else None, str(fetched.get_status().value))
    return out


def test_same_producer_same_results_on_rq_and_taskq(redis_url: str, tmp_path: Path) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    on_rq = producer(rq, conn, tmp_path / "rq-flag")
    rq.SimpleWorker([on_rq["q"]], connection=conn).work(burst=True)
    on_taskq = producer(taskq.rq, conn, tmp_path / "taskq-flag")
    before = {k: on_taskq[k] for k in ("len", "count", "ids")}
    assert before == {k: on_rq[k] for k in ("len", "count", "ids")} == {
        "len": 9, "count": 9, "ids": True}
    assert on_taskq["queued"] == on_rq["queued"]
    assert set(on_taskq["queued"].values()) == {"queued"}

    run_node(redis_url, "parity")

    got, want = outcomes(taskq.rq, conn, on_taskq["jobs"]), outcomes(rq, conn, on_rq["jobs"])
    assert got == want
    assert got["primes"][:5] == ("finished", True, False, 1229, "SUCCESSFUL")
    assert got["fails"][:5] == ("failed", False, True, None, "FAILED")
    assert got["fails"][5] == "ValueError: boom"
    assert got["retried"][3] == "second attempt"
    assert [got[f"many-{i}"][3] for i in range(3)] == [0, 2, 4]
    assert len(on_taskq["q"]) == 0
    conn.close()


# -- statuses one by one --------------------------------------------------------------


def test_started_then_finished(redis_url: str, tmp_path: Path) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    q = taskq.rq.Queue("st", connection=conn)
    release = tmp_path / "go"
    job = q.enqueue(rq_tasks.wait_for, str(release))
    assert job.get_status() == "queued" and job.is_queued and q.job_ids == [job.id]
    node = start_node(redis_url, "st")
    try:
        wait_until(lambda: job.get_status() == taskq.rq.JobStatus.STARTED, "started")
        assert q.count == 0 and q.job_ids == []
        with pytest.raises(taskq.rq.InvalidJobOperation, match="started"):
            job.cancel()
        release.touch()
        assert node.wait(timeout=30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert job.get_status() == "finished" and job.return_value() == "released"


def test_scheduled_retry_can_be_canceled(redis_url: str) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    q = taskq.rq.Queue("sched", connection=conn)
    job = q.enqueue(rq_tasks.fail_then_wait, "again", retry=taskq.rq.Retry(max=1, interval=60))
    node = start_node(redis_url, "sched")
    try:
        wait_until(lambda: job.get_status() == "scheduled", "scheduled (retry in backoff)")
        assert job.is_scheduled and job.latest_result() is None
        job.cancel()
        assert job.get_status() == "canceled" and job.is_canceled
        assert node.wait(timeout=30) == 0  # burst mode ends: nothing queued or delayed
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert job.get_status() == "canceled"


def test_cancel_a_queued_job_it_never_runs(redis_url: str) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    q = taskq.rq.Queue("cx", connection=conn)
    canceled, kept = q.enqueue(rq_tasks.add, 1, 1), q.enqueue(rq_tasks.add, 2, 2)
    canceled.cancel()
    assert canceled.get_status() == "canceled" and q.job_ids == [kept.id] and len(q) == 1
    with pytest.raises(taskq.rq.InvalidJobOperation, match="already canceled"):
        canceled.cancel()
    run_node(redis_url, "cx")
    assert kept.return_value(refresh=True) == 4
    assert canceled.latest_result() is None and canceled.get_status() == "canceled"


def test_unregistered_function_travels_signed(redis_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_SECRET", "rq-test-secret-" + "s" * 32)
    conn = redis_lib.Redis.from_url(redis_url)
    q = taskq.rq.Queue("signed", connection=conn)
    job = q.enqueue(rq_tasks.not_registered, 7)  # not a task: a signed pickle, as in taskq
    assert job.func_name.startswith("pickled:")
    run_node(redis_url, "signed")
    assert job.get_status() == "finished" and job.return_value() == 7


# -- producer-only behaviour (fakeredis and real) ----------------------------------------


def test_unknown_job_and_expiry(redis: redis_lib.Redis) -> None:
    with pytest.raises(taskq.rq.NoSuchJobError):
        taskq.rq.Job.fetch("nope", connection=redis)
    q = taskq.rq.Queue("x", connection=redis)
    job = q.enqueue(rq_tasks.add, 1)
    assert taskq.rq.Job.fetch(job.id, connection=redis).func_name == "rq_tasks.add"
    redis.delete(q.rq_jobs.record_key(job.id))
    redis.delete(q.broker.keys.stream)  # the entry and its record gone: rq says None
    assert job.get_status() is None


def test_sync_mode_runs_here(redis: redis_lib.Redis) -> None:
    q = taskq.rq.Queue("sync", connection=redis, is_async=False)
    ok, bad = q.enqueue(rq_tasks.add, 2, b=3), q.enqueue(rq_tasks.fail, "here")
    assert ok.is_finished and ok.return_value() == 5
    assert bad.is_failed and bad.exc_info is not None and "ValueError: here" in bad.exc_info
    assert taskq.rq.Job.fetch(ok.id, connection=redis).return_value() == 5
    assert len(q) == 0


def test_options_taskq_cannot_honour_are_refused(redis: redis_lib.Redis) -> None:
    from datetime import timedelta

    q = taskq.rq.Queue("opts", connection=redis)
    with pytest.raises(NotImplementedError, match="enqueue_in"):
        q.enqueue_in(timedelta(seconds=5), rq_tasks.add, 1)
    with pytest.raises(NotImplementedError, match="enqueue_at"):
        q.enqueue_at(None, rq_tasks.add, 1)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match=r"retries=0.*@taskq.task\(retries=2"):
        q.enqueue(rq_tasks.add, 1, retry=taskq.rq.Retry(max=2))
    for option in ("at_front", "ttl", "on_success", "pipeline"):
        with pytest.raises(NotImplementedError, match=option):
            q.enqueue(rq_tasks.add, 1, **{option: 10})
    with pytest.raises(SignatureError, match="TASKQ_SECRET"):
        q.enqueue(rq_tasks.not_registered, 1)  # unregistered: would travel pickled
    with pytest.raises(TypeError, match="add"):
        q.enqueue(rq_tasks.add, "x")  # checked against the task's signature before sending
    with pytest.raises(ValueError, match="job id"):
        q.enqueue(rq_tasks.add, 1, job_id="has space")
    assert len(q) == 0  # nothing refused was sent


def test_depends_on_only_a_finished_job(redis: redis_lib.Redis) -> None:
    q = taskq.rq.Queue("deps", connection=redis)
    waiting = q.enqueue(rq_tasks.add, 1)
    with pytest.raises(NotImplementedError, match=r"queued.*no job dependencies"):
        q.enqueue(rq_tasks.add, 2, depends_on=waiting)
    done = taskq.rq.Queue("deps", connection=redis, is_async=False).enqueue(rq_tasks.add, 3)
    after = q.enqueue(rq_tasks.add, 4, depends_on=[done.id])
    assert after.get_status() == "queued"


def test_unique_job_id(redis: redis_lib.Redis) -> None:
    q = taskq.rq.Queue("uniq", connection=redis)
    q.enqueue(rq_tasks.add, 1, job_id="only-once", unique=True)
    with pytest.raises(taskq.rq.DuplicateJobError):
        q.enqueue(rq_tasks.add, 1, job_id="only-once", unique=True)
    assert q.job_ids == ["only-once"]


# -- taskq rq import ---------------------------------------------------------------------


def _rq_backlog(conn: redis_lib.Redis, tmp_path: Path) -> dict[str, Any]:
    """A queue rq filled itself: JSON jobs of known tasks, a pickled job, an unknown one."""
    as_json = rq.Queue("imp", connection=conn, serializer=JSONSerializer)
    pickled = rq.Queue("imp", connection=conn)
    return {
        "add": as_json.enqueue(rq_tasks.add, 20, b=22, job_timeout=90),
        "primes": as_json.enqueue("rq_tasks.count_primes", 0, 100),
        "pickled": pickled.enqueue(rq_tasks.add, rq_tasks.Canary(str(tmp_path / "unpickled"))),
        "unknown": as_json.enqueue(rq_tasks.not_registered, 1),
    }


def test_import_moves_json_jobs_and_leaves_the_rest(redis_url: str, tmp_path: Path) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    jobs = _rq_backlog(conn, tmp_path)
    left = {k: conn.hgetall(f"rq:job:{jobs[k].id}") for k in ("pickled", "unknown")}

    dry = taskq_cli(redis_url, "rq", "import", "--queue", "imp", "--import", "rq_tasks", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 job(s)" in dry.stdout and "2 left in rq" in dry.stdout
    assert rq.Queue("imp", connection=conn).count == 4 and not conn.exists("taskq:{imp}:stream")

    done = taskq_cli(redis_url, "rq", "import", "--queue", "imp", "--import", "rq_tasks")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"moved       {jobs['add'].id}  rq_tasks.add" in lines
    assert any(jobs["pickled"].id in ln and "pickled payload" in ln for ln in lines), lines
    assert any(jobs["unknown"].id in ln and "not_registered" in ln and "not a registered" in ln
               for ln in lines), lines
    assert rq.Queue("imp", connection=conn).job_ids == [jobs["pickled"].id, jobs["unknown"].id]
    assert {k: conn.hgetall(f"rq:job:{jobs[k].id}") for k in left} == left  # untouched
    assert not conn.exists(f"rq:job:{jobs['add'].id}")
    assert not (tmp_path / "unpickled").exists()  # the pickle was never loaded

    run_node(redis_url, "imp")
    add = taskq.rq.Job.fetch(jobs["add"].id, connection=conn)
    assert add.get_status() == "finished" and add.return_value() == 42
    assert taskq.rq.Job.fetch(jobs["primes"].id, connection=conn).return_value() == 25
    again = taskq_cli(redis_url, "rq", "import", "--queue", "imp", "--import", "rq_tasks")
    assert "moved 0 job(s)" in again.stdout and "2 left in rq" in again.stdout


def _json_backlog(conn: redis_lib.Redis, n: int) -> list[str]:
    q = rq.Queue("bulk", connection=conn, serializer=JSONSerializer)
    jobs = q.enqueue_many([rq.Queue.prepare_data(rq_tasks.add, (i, 1)) for i in range(n)])
    return [j.id for j in jobs]


def _exactly_once(conn: redis_lib.Redis, ids: list[str]) -> None:
    import orjson

    bodies = [f[b"m"] for _, f in conn.xrange("taskq:{bulk}:stream")]
    assert sorted(orjson.loads(b)["id"] for b in bodies) == sorted(ids)
    assert rq.Queue("bulk", connection=conn).count == 0


def test_import_interrupted_after_the_taskq_write_reruns_exactly_once(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    ids = _json_backlog(conn, 3 * importer.BATCH + 7)
    real_remove = importer._remove_from_rq
    calls = []

    def crash_on_second(rq_conn: Any, jobs: Any) -> None:
        calls.append(len(jobs))
        if len(calls) == 2:  # the second batch is on taskq, still in rq: the worst moment
            raise KeyboardInterrupt
        real_remove(rq_conn, jobs)

    monkeypatch.setattr(importer, "_remove_from_rq", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        importer.import_queues(conn, conn, ["bulk"])
    assert rq.Queue("bulk", connection=conn).count == len(ids) - importer.BATCH
    monkeypatch.setattr(importer, "_remove_from_rq", real_remove)
    report = importer.import_queues(conn, conn, ["bulk"])
    assert len(report.already) == importer.BATCH
    assert len(report.moved) == len(ids) - 2 * importer.BATCH
    _exactly_once(conn, ids)


def test_import_killed_midway_and_rerun_moves_every_job_once(redis_url: str) -> None:
    conn = redis_lib.Redis.from_url(redis_url)
    ids = _json_backlog(conn, 3000)
    cmd = [sys.executable, "-m", "taskq", "--url", redis_url, "rq", "import", "--queue", "bulk",
           "--import", "rq_tasks"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: conn.exists("taskq:{bulk}:stream") and conn.xlen("taskq:{bulk}:stream") > 0,
                   "the first jobs on taskq", timeout=30)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    moved_before = conn.xlen("taskq:{bulk}:stream")
    assert 0 < moved_before < len(ids), "not killed midway"
    rerun = taskq_cli(redis_url, "rq", "import", "--queue", "bulk", "--import", "rq_tasks")
    assert rerun.returncode == 0, rerun.stderr
    _exactly_once(conn, ids)
    run_node(redis_url, "bulk", timeout=55)
    assert taskq.rq.Job.fetch(ids[-1], connection=conn).return_value() == 3000


def test_import_bad_input_is_one_line(redis_url: str) -> None:
    done = taskq_cli(redis_url, "rq", "import", "--import", "no_such_module_here")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no_such_module_here" in done.stderr and len(done.stderr.strip().splitlines()) == 1
