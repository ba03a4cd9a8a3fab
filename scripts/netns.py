"""Separate network hosts on one machine: Linux network namespaces joined by a bridge.

    with Topology() as net:                  # needs root and iproute2's ``ip``
        redis_host = net.add_host("redis")   # a namespace with eth0 = 10.231.R.1/24
        node = net.add_host("n1")
        proc = net.start(node, ["python", "-m", "taskq", ...], log=path)
        net.link(node, up=False)             # cut n1's cable; up=True plugs it back

Picture (every box is a namespace this module creates; the root namespace gets nothing)::

    [redis eth0]--+                 +--[n1 eth0]
    [prod  eth0]--+--[switch: br0]--+--[n2 eth0] ...

Each host's ``eth0`` is one end of a veth pair created directly inside the host's
namespace; the other end is a port of ``br0`` in the switch namespace. Addresses come
from a private /24 (10.231.x.0/24, x random, checked unused on this machine) that exists
only on these veths, and no namespace has a default route: traffic between hosts stays on
the bridge and cannot reach any other address. Names carry a per-run random suffix, so
runs (and other engineers' runs) never collide.

:meth:`Topology.close` (also on ``__exit__``, also after a failure half-way through
setup) kills every process started in the hosts, then any process still inside one of
our namespaces (by pid, from ``ip netns pids``), and deletes the namespaces, which
removes their veths and the bridge with them. Used by tests/test_multihost.py and
scripts/bench_multihost.py (tests may import scripts; scripts never import tests).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

PREFIX = "tqmh"
"""Every namespace and switch port this module creates starts with this."""
SUBNET_BASE = "10.231"
"""The /16 our /24s are taken from (private space; checked unused before use)."""
STOP_GRACE = 5.0
"""Seconds a process gets after SIGTERM before SIGKILL."""


@dataclass(frozen=True)
class Host:
    """One network host: a namespace with ``eth0`` at ``addr``."""

    name: str
    netns: str
    port: str  # its cable's far end: a bridge port in the switch namespace
    addr: str

    def prefix(self) -> list[str]:
        """argv prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]


def problem() -> str | None:
    """None if namespaces can be built here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}{secrets.token_hex(3)}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10.0)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def free_subnet() -> str:
    """``10.231.x`` for a /24 that no interface or route of this machine mentions."""
    used = _ip("-4", "-o", "addr") + _ip("-4", "route")
    for _ in range(64):
        net = f"{SUBNET_BASE}.{secrets.randbelow(254) + 1}"
        if f"{net}." not in used:
            return net
    raise RuntimeError(f"no free /24 in {SUBNET_BASE}.0.0/16")


class Topology:
    """A switch namespace with a bridge, and hosts plugged into it (see module doc)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = free_subnet()
        self.switch = f"{PREFIX}{self.tag}sw"
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        try:
            self._add_netns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)  # recorded at once: close() must remove it
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new namespace cabled to the switch; its address is the next in the /24."""
        index = len(self.hosts) + 1
        host = Host(name, f"{PREFIX}{self.tag}{name}", f"{PREFIX}{self.tag}p{index}",
                    f"{self.subnet}.{index}")
        try:
            self._add_netns(host.netns)
            # Both ends are born inside their namespaces: the root namespace never sees them.
            _ip("link", "add", "eth0", "netns", host.netns, "type", "veth",
                "peer", "name", host.port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        self.hosts.append(host)
        return host

    def link(self, host: Host, *, up: bool) -> None:
        """Plug (``up``) or cut the host's cable, from inside the host."""
        _ip("-n", host.netns, "link", "set", "eth0", "up" if up else "down")

    def start(self, host: Host, argv: list[str], *, log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run ``argv`` on ``host`` (``ip netns exec`` execs it: the pid is the command's),
        stdout and stderr to ``log``; it is stopped by :meth:`stop` or :meth:`close`."""
        out: IO[bytes]
        with open(log, "ab") as out:
            proc = subprocess.Popen(host.prefix() + argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def pids(self) -> list[int]:
        """Every process inside one of our namespaces (all of them started by us)."""
        found: list[int] = []
        for ns in self._namespaces:
            done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            found += [int(p) for p in done.stdout.split()]
        return found

    def close(self) -> None:
        """Stop everything started here, then remove every namespace (idempotent)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # no grace at teardown: whatever is left is being cleaned up
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE)
        deadline = time.monotonic() + STOP_GRACE
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:  # pool processes of a killed node, and such
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for ns in reversed(self._namespaces):  # hosts first, the switch last
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
