"""The embedded redis-server: lifecycle, URLs, persistence across kill/restart, cleanup."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import redis as redis_lib

from taskq.errors import EmbeddedRedisError
from taskq.local.embedded import EmbeddedRedis, find_redis_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def binary() -> str:
    """The redis-server these tests start; skipped (an error under CI) when there is none."""
    try:
        return find_redis_server()
    except EmbeddedRedisError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_find_redis_server_honours_env(monkeypatch: pytest.MonkeyPatch, binary: str) -> None:
    assert os.access(binary, os.X_OK)
    monkeypatch.setenv("TASKQ_REDIS_SERVER", binary)
    assert find_redis_server() == binary


def test_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(EmbeddedRedisError, match="TASKQ_REDIS_SERVER"):
        find_redis_server()
    server = EmbeddedRedis()
    with pytest.raises(EmbeddedRedisError):
        server.start()
    assert not server.running and server.directory is None  # temp dir removed


def test_binary_exiting_at_startup_is_reported() -> None:
    server = EmbeddedRedis(binary=sys.executable)  # "python --daemonize no ..." fails fast
    t0 = time.monotonic()
    with pytest.raises(EmbeddedRedisError, match="exited at startup"):
        server.start()
    assert time.monotonic() - t0 < 5
    assert not server.running


@pytest.mark.usefixtures("binary")
def test_unix_socket_start_ping_stop() -> None:
    server = EmbeddedRedis().start()
    directory, pid = server.directory, server.pid
    assert directory and pid and server.running
    assert server.url.startswith("unix://") and server.url.endswith("redis.sock?db=0")
    with redis_lib.Redis.from_url(server.url) as client:
        assert client.ping()
        assert client.config_get("port")["port"] == "0"  # no TCP listener
    server.stop()
    assert not server.running and server.pid is None
    assert not os.path.exists(directory)
    assert _gone(pid)
    server.stop()  # idempotent
    server.close()


@pytest.mark.usefixtures("binary")
def test_tcp_free_port_and_context_manager() -> None:
    with EmbeddedRedis(port=0) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.port and server.port > 0
        with redis_lib.Redis.from_url(server.url) as client:
            assert client.ping()
        pid = server.pid
        assert pid is not None
    assert not server.running and _gone(pid)


@pytest.mark.usefixtures("binary")
def test_busy_port_reports_log_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedRedisError, match="exited at startup"):
            EmbeddedRedis(port=port).start()


@pytest.mark.usefixtures("binary")
def test_free_port_race_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskq.local.embedded as embedded

    real_free_port = embedded._free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1]])
        monkeypatch.setattr(embedded, "_free_port", lambda: next(picks, None) or real_free_port())
        with EmbeddedRedis(port=0) as server:
            assert server.port != taken.getsockname()[1]
            with redis_lib.Redis.from_url(server.url) as client:
                assert client.ping()


@pytest.mark.usefixtures("binary")
def test_given_directory_is_kept_and_deep_paths_get_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    with EmbeddedRedis(directory=str(deep), appendonly=True) as server:
        sock = server.socket_path
        assert sock and len(sock) < 100 and not sock.startswith(str(deep))
        with redis_lib.Redis.from_url(server.url) as client:
            client.set("k", "v")
    assert (deep / "appendonly.aof").exists() and (deep / "redis.log").exists()
    assert not os.path.exists(os.path.dirname(sock))  # the extra socket dir is removed
    again = EmbeddedRedis(directory=str(deep), appendonly=True)
    with again, redis_lib.Redis.from_url(again.start().url) as client:  # reloads the AOF
        assert client.get("k") == b"v"


@pytest.mark.usefixtures("binary")
def test_restart_keeps_data_with_appendonly() -> None:
    with EmbeddedRedis(port=0, appendonly=True) as server:
        url = server.url
        client = redis_lib.Redis.from_url(url)
        client.set("k", "v")
        client.xadd("s", {"f": "1"})
        old_pid = server.pid
        assert old_pid is not None
        server.kill()
        assert not server.running and _gone(old_pid)
        server.restart()
        assert server.url == url and server.pid != old_pid
        assert client.get("k") == b"v"  # the same client reconnects to the same URL
        assert client.xlen("s") == 1
        server.restart()  # a graceful restart of a running server keeps the data too
        assert client.get("k") == b"v"
        client.close()


def test_restart_unix_socket_same_url(embedded_server: EmbeddedRedis) -> None:
    url = embedded_server.url
    with redis_lib.Redis.from_url(url) as client:
        client.set("x", 1)
        embedded_server.kill()
        with pytest.raises(redis_lib.ConnectionError):
            redis_lib.Redis.from_url(url, socket_connect_timeout=1).ping()
        embedded_server.restart()
        assert embedded_server.url == url
        assert client.get("x") == b"1"


@pytest.mark.usefixtures("binary")
def test_forked_child_does_not_stop_parent_server() -> None:
    with EmbeddedRedis() as server:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            server._atexit()
            server.stop()
            os._exit(0)
        os.waitpid(pid, 0)
        assert server.running
        with redis_lib.Redis.from_url(server.url) as client:
            assert client.ping()


@pytest.mark.usefixtures("binary")
def test_atexit_stops_a_forgotten_server() -> None:
    code = textwrap.dedent(
        """
        from taskq.local.embedded import EmbeddedRedis
        s = EmbeddedRedis().start()
        print(s.pid, s.directory, flush=True)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20,
        check=True,
    ).stdout.split()
    pid, directory = int(out[0]), out[1]
    assert _gone(pid)
    assert not os.path.exists(directory)


def test_fixtures_roundtrip(redis: redis_lib.Redis) -> None:
    redis.set("a", "1")
    assert redis.get("a") == b"1"
    assert redis.eval("return redis.call('INCR', KEYS[1])", 1, "a") == 2


@pytest.mark.realserver
def test_redis_url_is_flushed(redis_url: str) -> None:
    with redis_lib.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-over", 1)


# -- local mode at exit (taskq.local.lifetime) --------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")} | {
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_exit_callbacks_run_by_phase_and_later_phases_survive_a_failure() -> None:
    code = textwrap.dedent(
        """
        from taskq.local import lifetime
        from taskq.local.lifetime import Phase

        def say(word):
            return lambda: print(word, flush=True)

        def broken():
            raise RuntimeError("boom")

        lifetime.at_exit(Phase.STOP_SERVERS, say("servers"))
        lifetime.at_exit(Phase.STOP_NODES, say("nodes"))
        lifetime.at_exit(Phase.RELEASE_SHARED, say("release"))
        lifetime.at_exit(Phase.FINISH_WORK, say("work-1"))
        lifetime.at_exit(Phase.FINISH_WORK, broken)
        lifetime.at_exit(Phase.FINISH_WORK, say("work-2"))
        gone = say("cancelled")
        lifetime.at_exit(Phase.FINISH_WORK, gone)
        lifetime.cancel(gone)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=LOCAL_ENV, timeout=20)
    assert done.returncode == 0, done.stderr
    # Phase order whatever the registration order; last registered first within a phase.
    assert done.stdout.split() == ["work-2", "work-1", "release", "nodes", "servers"]
    assert "taskq: at exit (finish_work), broken failed: RuntimeError: boom" in done.stderr
    assert "Traceback" not in done.stderr


LOCAL_PROGRAM = '''
import os, sys, time
import psutil, redis
import taskq
from taskq.compat import leases
from taskq.local import lifetime

def slow_write(directory, i):
    time.sleep(0.5)
    with open(os.path.join(directory, f"done-{i}"), "w") as f:
        f.write("ok")
    return i

def check_written_back(counter):
    raw = redis.Redis.from_url(counter.url).get(counter.key)  # not through the cache
    print("at exit:", raw.decode(), flush=True)

if __name__ == "__main__":
    leases._IDLE_WRITE_BACK = 3600.0  # only the exit write-back may store the value
    counter = taskq.Value("i", 0)
    with counter.get_lock():
        for _ in range(42):
            counter.value += 1
    executor = taskq.Executor(2)
    for i in range(4):
        executor.submit(slow_write, sys.argv[1], i)  # still pending when main returns
    lifetime.at_exit(lifetime.Phase.STOP_NODES, lambda: check_written_back(counter))
    print("before exit:", redis.Redis.from_url(counter.url).get(counter.key).decode())
    kids = psutil.Process().children(recursive=True)
    print("children:", *[f"{p.pid}={p.name()}" for p in kids], flush=True)
'''


@pytest.mark.usefixtures("binary")
@pytest.mark.timeout(120)
def test_local_mode_exit_finishes_work_writes_back_then_stops_everything(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(LOCAL_PROGRAM)
    done = subprocess.run([sys.executable, str(program), str(tmp_path)], capture_output=True,
                          text=True, env=LOCAL_ENV, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "at exit (" not in done.stderr, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert lines["before exit"].strip() == "0"  # cached under the lease until exit
    assert lines["at exit"].strip() == "42"  # written back while Redis was still up
    assert sorted(p.name for p in tmp_path.glob("done-*")) == [f"done-{i}" for i in range(4)]
    pairs = [item.split("=", 1) for item in lines["children"].split()]
    children = [int(pid) for pid, _ in pairs]
    names = [name for _, name in pairs]
    assert names.count("redis-server") == 2, names  # the Value's and the Executor's clusters
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)  # a node's pool processes may take a moment after their parent
    assert [pid for pid in children if not _gone(pid)] == []


SIGKILLED_PROGRAM = '''
import sys, time
import psutil
import taskq

if __name__ == "__main__":
    executor = taskq.Executor(1)
    assert executor.submit(pow, 2, 5).result(timeout=60) == 32
    servers = [p for p in psutil.Process().children(recursive=True) if p.name() == "redis-server"]
    print(*[p.pid for p in servers], flush=True)
    time.sleep(120)  # SIGKILLed here: no atexit hook runs
'''


@pytest.mark.usefixtures("binary")
@pytest.mark.timeout(90)
def test_a_sigkilled_local_mode_program_leaves_no_server_and_no_temp_dir(tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(SIGKILLED_PROGRAM)
    proc = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE, text=True,
                            env=LOCAL_ENV, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        servers = [int(pid) for pid in proc.stdout.readline().split()]
        assert servers, "the program started no embedded redis-server"
        cmdlines = " ".join(" ".join(psutil.Process(pid).cmdline()) for pid in servers)
        dirs = sorted(set(re.findall(rf"/\S*?taskq-redis-{proc.pid}-[^/\s]+", cmdlines)))
        assert dirs and all(os.path.isdir(d) for d in dirs)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel's SIGTERM (PDEATHSIG) and redis's own exit
    assert [pid for pid in servers if not _gone(pid)] == []
    assert all(os.path.isdir(d) for d in dirs)  # nothing ran at the kill: left behind...
    with EmbeddedRedis() as server:  # ...until the next start on this machine
        assert server.running
    assert [d for d in dirs if os.path.exists(d)] == []
