"""Nodes on separate network hosts: Redis, the producer and three worker nodes, each in
its own network namespace, talking over veth addresses on one bridge only.

The hosts, Redis (the embedded redis-server binary bound to its veth address), the
``taskq worker`` nodes and the producer agent come from ``scripts/netns.py`` and
``scripts/bench_multihost.py`` (the benchmark runs the same setup). The test process
itself never opens a socket to those addresses: it asks the producer agent, which runs
on the producer host. Which host ran what is read from the task's own execution log
(files, outside Redis) and from the results.

Needs root and iproute2: skipped with the reason otherwise, a failure under ``CI=true``.
Every namespace, veth and process is removed in the fixture's finalizer, failure or not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import _in_ci

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench_multihost import Agent, HostSet, read_runs
from netns import Topology, problem

LEASE = 3.0
STREAM, STATS = "taskq:{default}:stream", "taskq:{default}:stats"


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[HostSet]:
    why = problem()
    if why:
        if _in_ci():
            pytest.fail(f"multi-host test required under CI: {why}", pytrace=False)
        pytest.skip(why)
    net = Topology()
    try:
        hostset = HostSet(net, tmp_path, nodes=3)
        hostset.start_redis()
        yield hostset
    finally:
        net.close()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert net.tag not in left, f"namespaces left behind: {left}"
        assert not net.pids()


class Hosts:
    """The three nodes started on their hosts, and the producer agent."""

    def __init__(self, bed: HostSet) -> None:
        self.bed = bed
        self.procs = {h.name: bed.start_node(h, lease=LEASE) for h in bed.node_hosts}
        self.agent: Agent = bed.agent()
        self.nodes = self.agent.live_nodes("default", 3, timeout=30.0)

    def node_pid(self, host: str) -> int:
        return self.procs[host].pid  # `ip netns exec` execs: the pid is the node's

    def consumer(self, host: str) -> str:
        """The node id (its consumer name in the group) of the node on ``host``."""
        return next(n["id"] for n in self.nodes if int(n["pid"]) == self.node_pid(host))

    def redis(self, *cmd: Any) -> Any:
        return self.agent.call("redis", cmd=list(cmd))["reply"]

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis("HGETALL", STATS).items()}

    def run(self, prefix: str, n: int, seconds: float) -> dict[str, dict[str, Any]]:
        """Submit ``n`` mh.where tasks; token → result, once all have resolved."""
        ids = self.agent.call("submit", task="mh.where",
                              arglists=[[f"{prefix}{i}", seconds] for i in range(n)])["ids"]
        got = self.agent.call("wait", timeout=40.0)
        assert not got["errors"] and not got["pending"], (got, self.logs())
        assert sorted(got["results"]) == sorted(ids)
        return {v["token"]: {**v, "id": k} for k, v in got["results"].items()}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.bed.log_dir.glob("*.log")))


def test_tasks_spread_over_the_hosts(bed: HostSet) -> None:
    hosts = Hosts(bed)
    results = hosts.run("s", 18, 0.2)
    by_host = Counter(r["host"] for r in results.values())
    assert set(by_host) == {"n1", "n2", "n3"}, by_host
    for r in results.values():  # each result came from the node process on that host
        assert r["node_pid"] == hosts.node_pid(r["host"]), r
    runs = read_runs(bed.runs)
    assert Counter({h: len(toks) for h, toks in runs.items()}) == by_host  # each ran once
    # Every connection Redis has comes from a veth address of our hosts, each node's
    # from its own host's address: nothing went over any other network.
    clients = hosts.redis("CLIENT", "LIST")
    addrs = {f.split("=")[1].rsplit(":", 1)[0] for line in clients.splitlines()
             for f in line.split() if f.startswith("addr=")}
    node_addrs = {h.addr for h in bed.node_hosts}
    assert node_addrs <= addrs <= node_addrs | {bed.producer.addr}, addrs


@pytest.mark.timeout(90)
def test_cut_link_tasks_reclaimed_and_late_reports_suppressed(bed: HostSet) -> None:
    hosts = Hosts(bed)
    cut = bed.node_hosts[0]
    me = hosts.consumer(cut.name)
    ids = hosts.agent.call("submit", task="mh.where",
                           arglists=[[f"c{i}", 1.0] for i in range(12)])["ids"]

    def cut_node_is_running() -> bool:
        pending = hosts.redis("XPENDING", STREAM, "workers")  # redis-py's summary dict
        held = sum(int(c["pending"]) for c in pending["consumers"] if c["name"] == me)
        return held >= 1 and bool(read_runs(bed.runs).get(cut.name))

    wait_until(cut_node_is_running, 15.0, f"{cut.name} to hold and run a task")
    bed.net.link(cut, up=False)
    got = hosts.agent.call("wait", timeout=40.0)
    assert not got["errors"] and not got["pending"], (got, hosts.logs())
    results = {v["token"]: {**v, "id": k} for k, v in got["results"].items()}
    assert sorted(r["id"] for r in results.values()) == sorted(ids)

    runs = read_runs(bed.runs)
    lost = set(runs[cut.name])  # what the cut node started: its outcomes never arrived
    assert lost and all(results[t]["host"] != cut.name for t in lost), (runs, results)
    for token in lost:  # taken over once the lease ran out, and run again elsewhere
        assert token in runs[results[token]["host"]]
    assert hosts.stats()["done"] == 12  # one outcome per task
    assert hosts.procs[cut.name].poll() is None, hosts.logs()

    bed.net.link(cut, up=True)
    wait_until(lambda: hosts.stats().get("suppressed", 0) >= 1, 30.0,
               f"{cut.name}'s late reports to arrive (and be suppressed)")
    assert hosts.stats()["done"] == 12, hosts.logs()  # nothing counted twice
    for token in lost:  # the stored result is still the reclaimer's
        stored = json.loads(hosts.redis("GET", f"taskq:{{default}}:result:{results[token]['id']}"))
        assert stored["v"]["host"] == results[token]["host"] != cut.name, stored
    assert "suppressed" in (bed.log_dir / f"{cut.name}.log").read_text()
    # The node was never down, only unreachable: back on the network, it takes work again.
    again = hosts.run("b", 9, 0.3)
    assert cut.name in {r["host"] for r in again.values()}, hosts.logs()
