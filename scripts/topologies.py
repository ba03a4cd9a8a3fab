"""Real Redis topologies on loopback: a 3-master + 3-replica Redis Cluster and a master +
replica + Sentinel set, from the ``redis-server`` binary, in a temp dir, stopped by pid.

    with Cluster() as cluster:               # ~3 s: redis-cli --cluster create
        url = cluster.url                    # redis+cluster://127.0.0.1:p1,127.0.0.1:p2/
        cluster.failover(key)                # CLUSTER FAILOVER on the replica of key's master
        cluster.kill(cluster.master_of(key)) # an unplanned failover

    with SentinelSet() as sentinel:
        url = sentinel.url                   # redis+sentinel://127.0.0.1:p/taskq-test
        sentinel.failover()                  # SENTINEL FAILOVER

Shared by tests/conftest.py (the ``cluster`` and ``sentinel`` fixtures) and
scripts/chaos.py (``--cluster`` / ``--sentinel``): tests import scripts, never the reverse.
A topology that cannot be had (no binary, a server that does not come up) raises
:class:`Unavailable`; the fixtures turn that into a skip (an error under ``CI=true``).

Debian's redis-server (7.x) is preferred; every server runs with no persistence and
``repl-diskless-sync-delay 0``, and a topology counts as up only once every replica's
link to its master is ``connected`` (its initial sync done): a failover before that
would promote an empty replica, which is a test-setup artefact, not a taskq loss.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis


class Unavailable(RuntimeError):
    """This machine cannot run the topology (a binary missing, a server not starting)."""


def binary(name: str) -> str:
    """Debian's binary where present (7.x), else one on PATH."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    raise Unavailable(f"no {name} binary (Debian's redis-server package provides it)")


def free_port(bus: bool = False) -> int:
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


def wait_until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check()`` (Redis errors count as "not yet") until true, or TimeoutError."""
    end = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def linked(client: redis.Redis) -> bool:
    """Is this server a master, or a replica whose initial sync is done?"""
    role: Any = client.execute_command("ROLE")
    return bool(role[0] == b"master" or (role[0] == b"slave" and role[3] == b"connected"))


class Servers:
    """redis-server processes of one topology, in one temp dir, stopped by pid."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        self.server = binary("redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix=f"taskq-{name}-", dir=root))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    def __enter__(self) -> Any:
        try:
            self.create()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def create(self) -> None:
        raise NotImplementedError

    def start(self, port: int, *extra: str) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        args = self.args.setdefault(port, [
            self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--repl-diskless-sync-delay", "0", "--logfile", str(workdir / "log"), *extra])
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.client(port).ping(), 10, f"redis-server on port {port}")
        except TimeoutError as exc:
            raise Unavailable(str(exc)) from None

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1)

    def kill(self, port: int) -> None:
        """SIGKILL one server (an unplanned failover)."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed server again with its arguments (it keeps no data)."""
        self.start(port)

    def wait_linked(self, timeout: float = 30) -> None:
        """Until every live server is a master or a replica in sync."""
        wait_until(lambda: all(linked(self.client(p)) for p in self.redis_ports()),
                   timeout, "every replica in sync with its master")

    def redis_ports(self) -> list[int]:
        return list(self.procs)

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
    """3 masters + 3 replicas (``redis-cli --cluster create … --cluster-replicas 1``).
    A replica may take over as soon as its master fails (validity factor 0), and a
    master is judged failed after 1.5 s (``cluster-node-timeout``)."""

    def __init__(self, root: Path | None = None) -> None:
        super().__init__("cluster", root)
        self.ports = [free_port(bus=True) for _ in range(6)]
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}/"

    def create(self) -> None:
        for port in self.ports:
            self.start(port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", "1500",
                       "--cluster-replica-validity-factor", "0")
        try:
            subprocess.run([binary("redis-cli"), "--cluster", "create",
                            *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1",
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
        except subprocess.SubprocessError as exc:
            raise Unavailable(f"redis-cli --cluster create failed: {exc}") from None
        self.wait_ok()

    def nodes(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by any live node: id, port, role, master id, slots."""
        for port in self.procs:
            try:
                text = self.client(port).execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            text = text.decode() if isinstance(text, bytes) else text
            if not isinstance(text, str):  # redis-py may parse it already
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
        """Until 3 masters own the slots, every live server has a master (replicas in
        sync) and every node says ``cluster_state:ok``."""
        def ok() -> bool:
            live = [n for n in self.nodes() if n["port"] in self.procs]
            masters = [n for n in live if n["master"] and n["slots"]]
            states = [self.client(p).execute_command("CLUSTER", "INFO") for p in self.procs]
            ids = {n["id"] for n in masters}
            replicas = [n for n in live if not n["master"] and n["of"] in ids]
            return (len(masters) == 3 and len(replicas) == len(self.procs) - 3
                    and all(b"cluster_state:ok" in s for s in states)
                    and all(linked(self.client(p)) for p in self.procs))
        wait_until(ok, timeout, "cluster_state:ok on every node, replicas in sync")

    def owner(self, key: str) -> int | None:
        """The port of the master that owns ``key``'s slot now (None: none does, as
        while a failed master's replica is not promoted yet)."""
        slot = int(self.client(next(iter(self.procs))).execute_command("CLUSTER", "KEYSLOT", key))
        for n in self.nodes():
            if not n["master"]:
                continue
            for r in n["slots"]:
                lo, _, hi = r.partition("-")
                if not r.startswith("[") and int(lo) <= slot <= int(hi or lo):
                    return int(n["port"])
        return None

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        port = self.owner(key)
        if port is None:
            raise RuntimeError(f"no master owns the slot of {key}")
        return port

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        master_id = next(n["id"] for n in nodes if n["port"] == master_port)
        return next(n["port"] for n in nodes if n["of"] == master_id and n["port"] in self.procs)

    def failover(self, key: str, timeout: float = 30) -> int:
        """A planned failover of ``key``'s master (``CLUSTER FAILOVER`` on its replica);
        the new master's port once the cluster is whole again."""
        replica = self.replica_of(self.master_of(key))
        self.client(replica).execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: self.owner(key) == replica, timeout, "the CLUSTER FAILOVER")
        self.wait_ok(timeout)
        return replica

    def kill_master(self, key: str, timeout: float = 30) -> tuple[int, int]:
        """An unplanned failover: SIGKILL ``key``'s master, wait until its replica owns
        the slot, start the killed one again (it rejoins as a replica, empty, and syncs);
        (killed port, new master port)."""
        master = self.master_of(key)
        replica = self.replica_of(master)
        self.kill(master)
        wait_until(lambda: self.owner(key) == replica, timeout, "the replica's promotion")
        self.restart(master)
        self.wait_ok(timeout)
        return master, replica

    def flush(self) -> None:
        self.wait_ok()
        for port in self.procs:  # each server's own ROLE: views of the others may lag
            client = self.client(port)
            if client.execute_command("ROLE")[0] == b"master":
                client.flushall()


class SentinelSet(Servers):
    """A master, a replica and one Sentinel (quorum 1) watching ``taskq-test``."""

    NAME = "taskq-test"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__("sentinel", root)
        self.master_port, self.replica_port, self.sentinel_port = (free_port() for _ in range(3))
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
        try:
            wait_until(lambda: self.sentinel().execute_command(
                "SENTINEL REPLICAS", self.NAME), 20, "Sentinel to see the replica")
            self.wait_linked()
        except TimeoutError as exc:
            raise Unavailable(str(exc)) from None

    def redis_ports(self) -> list[int]:
        return [p for p in self.procs if p != self.sentinel_port]

    def sentinel(self) -> redis.Redis:
        return self.client(self.sentinel_port)

    def master(self) -> int:
        _host, port = self.sentinel().execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.NAME)
        return int(port)

    def failover(self, key: str = "") -> int:
        """``SENTINEL FAILOVER``; the new master's port once it took over and the old
        one follows it in sync (``key`` ignored, as in :meth:`kill_master`)."""
        old = self.master()
        # NOGOODSLAVE until Sentinel has seen the replica in sync: retried.
        wait_until(lambda: self.sentinel().execute_command("SENTINEL FAILOVER", self.NAME), 30,
                   "Sentinel to accept SENTINEL FAILOVER")
        wait_until(lambda: self.master() != old and self.client(self.master()).execute_command(
            "ROLE")[0] == b"master", 30, "the Sentinel failover")
        wait_until(lambda: self.client(old).execute_command("ROLE")[0] == b"slave", 30,
                   "the old master to follow the new one")
        self.wait_linked()
        return self.master()

    def kill_master(self, key: str = "", timeout: float = 30) -> tuple[int, int]:
        """An unplanned failover: SIGKILL the master, wait for Sentinel to promote the
        replica, start the killed one again (empty; Sentinel turns it into a replica of
        the new master, and it syncs); (killed port, new master port). ``key`` is
        ignored (one master holds every key), as in :meth:`Cluster.kill_master`."""
        old = self.master()
        self.kill(old)
        wait_until(lambda: self.master() != old and self.client(self.master()).execute_command(
            "ROLE")[0] == b"master", timeout, "Sentinel to promote the replica")
        self.restart(old)
        wait_until(lambda: self.client(old).execute_command("ROLE")[0] == b"slave", timeout,
                   "Sentinel to turn the restarted master into a replica")
        self.wait_linked(timeout)
        return old, self.master()

    def flush(self) -> None:
        master = self.client(self.master())
        master.flushall()
        master.execute_command("WAIT", 1, 5000)
