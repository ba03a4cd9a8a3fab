#!/usr/bin/env python3
"""taskq across separate network hosts, on one machine: throughput with 1, 2, 3 nodes.

    sudo .venv/bin/python scripts/bench_multihost.py             # full sizes, 2 repeats
    sudo .venv/bin/python scripts/bench_multihost.py --quick     # tiny sizes, 1 repeat

Every party is its own network host (a namespace from scripts/netns.py, all on one
bridge, addresses only in a private /24): Redis (the embedded redis-server binary), the
producer, and up to three ``taskq worker --procs 1`` nodes. Workloads, per node count:

  B  primes below 3,000,000 in 60 tasks of 50,000 (wall s, tasks/s; the count is checked)
  A  2,000 no-op tasks submitted one by one until every result is held (tasks/s)

The table goes to stdout, progress to stderr; everything started is stopped and every
namespace removed on exit. This module is also what the hosts run: the ``mh.where``
task (``--import bench_multihost``) and the producer ``agent`` (one JSON request per
line on stdin, one JSON reply per line on stdout), which tests/test_multihost.py drives
over the same :class:`HostSet`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):  # run from a checkout without installing
    if _path not in sys.path:
        sys.path.insert(1, _path)

from netns import Host, Topology  # noqa: E402

from taskq import task  # noqa: E402

REDIS_PORT = 6390
"""Redis's port on its own host (each namespace has its own port space)."""
PRIMES_EXPECTED = {3_000_000: 216_816, 300_000: 25_997}
HOST_ENV, LOG_ENV = "TASKQ_MH_HOST", "TASKQ_MH_LOG"


@task(name="mh.where", timeout=60.0)
def where(token: str, seconds: float = 0.0) -> dict[str, Any]:
    """Which host and process ran this: logged on start (a fact outside Redis, like the
    reliability tests' log), then returned after ``seconds`` of pretend work."""
    host = os.environ.get(HOST_ENV, "?")
    log_dir = os.environ.get(LOG_ENV)
    if log_dir:
        with open(os.path.join(log_dir, f"{host}.runs"), "a") as f:
            f.write(f"{token} {os.getpid()}\n")
    time.sleep(seconds)
    return {"token": token, "host": host, "pid": os.getpid(), "node_pid": os.getppid()}


def read_runs(log_dir: Path) -> dict[str, list[str]]:
    """host → the tokens it started, in order (from :func:`where`'s log)."""
    return {p.stem: [line.split()[0] for line in p.read_text().splitlines()]
            for p in sorted(log_dir.glob("*.runs"))}


# -- the producer agent (runs on the producer host) ------------------------------------

def agent_main(url: str, queue_name: str) -> None:
    """Serve requests from stdin until it closes; see :func:`_handle` for the ops."""
    import redis

    from taskq import Client

    client = Client(url, queue=queue_name)
    r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0)
    futures: dict[str, Future[Any]] = {}
    for line in sys.stdin:
        try:
            reply = _handle(json.loads(line), client, r, futures)
        except Exception as exc:  # the caller sees it; the agent keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    client.close()


def _handle(req: dict[str, Any], client: Any, r: Any,
            futures: dict[str, Future[Any]]) -> dict[str, Any]:
    """``submit`` (task, arglists → ids), ``wait`` (timeout → results/errors of what
    resolved, pending ids), ``redis`` (one command → reply), ``nodes`` (live node hashes),
    ``run`` (task, arglists → seconds until all results are held, their sum if numbers)."""
    op = req["op"]
    if op == "submit":
        ids = []
        for args in req["arglists"]:
            fut = client.submit(req["task"], *args)
            ids.append(str(getattr(fut, "task_id")))  # noqa: B009 - set by the client
            futures[ids[-1]] = fut
        return {"ids": ids}
    if op == "wait":
        deadline = time.monotonic() + float(req["timeout"])
        results, errors = {}, {}
        for key in list(futures):
            try:
                value = futures[key].result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                continue
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
            else:
                results[key] = value
            del futures[key]
        return {"results": results, "errors": errors, "pending": list(futures)}
    if op == "redis":
        return {"reply": r.execute_command(*req["cmd"])}
    if op == "nodes":
        ids = r.zrange("taskq:nodes", 0, -1)
        return {"nodes": [h for h in (r.hgetall(f"taskq:node:{i}") for i in ids) if h]}
    if op == "run":
        start = time.perf_counter()
        pending = [client.submit(req["task"], *args) for args in req["arglists"]]
        deadline = time.monotonic() + float(req.get("timeout", 300.0))
        values = [f.result(max(0.0, deadline - time.monotonic())) for f in pending]
        seconds = time.perf_counter() - start
        numbers = [v for v in values if isinstance(v, int)]
        return {"seconds": seconds, "sum": sum(numbers) if numbers else None}
    raise ValueError(f"unknown op {op!r}")


class Agent:
    """The producer agent, run on ``host``: :meth:`call` sends one request, bounded."""

    def __init__(self, net: Topology, host: Host, url: str, queue_name: str, log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [*host.prefix(), sys.executable, str(Path(__file__).resolve()), "agent",
                 "--url", url, "--queue", queue_name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=node_env(host))
        net.procs.append(self.proc)  # the topology kills it if nobody else does
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")  # EOF: the agent exited

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; its reply, waited for 10 s past the request's own ``timeout``."""
        assert self.proc.stdin is not None
        timeout = float(fields.get("timeout", 20.0)) + 10.0
        self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"agent: no answer to {op!r} in {timeout} s") from None
        if not line:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"agent exited ({self.proc.wait(5.0)}) during {op!r}: {tail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"agent {op!r}: {reply['error']}")
        return reply

    def live_nodes(self, queue_name: str, count: int, timeout: float) -> list[dict[str, str]]:
        """Wait until ``count`` nodes serving ``queue_name`` have a heartbeat."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = [n for n in self.call("nodes")["nodes"] if n.get("queues") == queue_name]
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)}/{count} nodes up after {timeout} s")
            time.sleep(0.1)

    def processed(self, queue_name: str, count: int, timeout: float = 15.0) -> list[int]:
        """Tasks each node serving ``queue_name`` has processed, from heartbeats sent
        after this call (they come every few seconds), most first."""
        since = time.time() * 1000.0
        deadline = time.monotonic() + timeout
        while True:
            fresh = [n for n in self.live_nodes(queue_name, count, timeout)
                     if float(n.get("seen", 0)) >= since]
            if len(fresh) >= count:
                return sorted((int(n["processed"]) for n in fresh), reverse=True)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fresh heartbeat from {count} nodes in {timeout} s")
            time.sleep(0.2)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def node_env(host: Host, log_dir: Path | None = None) -> dict[str, str]:
    """What a process on ``host`` needs: this checkout and scripts/ importable, its
    host name for :func:`where`, and none of the caller's TASKQ_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env[HOST_ENV] = host.name
    if log_dir is not None:
        env[LOG_ENV] = str(log_dir)
    return env


class HostSet:
    """Redis, a producer and ``nodes`` node hosts on one :class:`Topology`."""

    def __init__(self, net: Topology, log_dir: Path, nodes: int) -> None:
        self.net, self.log_dir = net, log_dir
        self.redis = net.add_host("redis")
        self.producer = net.add_host("prod")
        self.node_hosts = [net.add_host(f"n{i + 1}") for i in range(nodes)]
        self.url = f"redis://{self.redis.addr}:{REDIS_PORT}/0"
        self.runs = log_dir / "runs"
        self.runs.mkdir(exist_ok=True)

    def start_redis(self, timeout: float = 10.0) -> subprocess.Popen[bytes]:
        """The embedded redis-server on the Redis host, bound to its veth address only."""
        from taskq.local.embedded import find_redis_server

        log = self.log_dir / "redis.log"
        proc = self.net.start(self.redis, [
            find_redis_server(), "--port", str(REDIS_PORT), "--bind", self.redis.addr,
            "--save", "", "--appendonly", "no", "--dir", str(self.log_dir)], log=log)
        deadline = time.monotonic() + timeout
        while b"Ready to accept connections" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        return proc

    def start_node(self, host: Host, *, queue_name: str = "default", lease: float = 30.0,
                   procs: int = 1) -> subprocess.Popen[bytes]:
        return self.net.start(host, [
            sys.executable, "-m", "taskq", "--url", self.url, "worker", "--procs", str(procs),
            "--queue", queue_name, "--lease", str(lease), "--import", "taskq.tasks",
            "--import", "bench_multihost"], log=self.log_dir / f"{host.name}.log",
            env=node_env(host, self.runs))

    def agent(self, queue_name: str = "default") -> Agent:
        return Agent(self.net, self.producer, self.url, queue_name, self.log_dir / "agent.log")


# -- the benchmark ---------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_b(agent: Agent, opts: argparse.Namespace) -> float:
    """Wall seconds of one B run (the prime count checked)."""
    step = opts.primes_step
    ranges = [[i, i + step] for i in range(0, opts.primes_below, step)]
    got = agent.call("run", task="primes", arglists=ranges, timeout=600.0)
    if got["sum"] != PRIMES_EXPECTED[opts.primes_below]:
        raise RuntimeError(f"B: counted {got['sum']} primes")
    return float(got["seconds"])


def measure(bed: HostSet, k: int, opts: argparse.Namespace) -> dict[str, Any]:
    """With ``k`` fresh nodes: B (median), A tasks/s (median), then one B again on the
    same nodes, now that they have seen no-ops (see the README on what that shows)."""
    queue_name = f"bench{k}"
    procs = [bed.start_node(h, queue_name=queue_name) for h in bed.node_hosts[:k]]
    agent = bed.agent(queue_name)
    try:
        agent.live_nodes(queue_name, k, timeout=60.0)
        b_runs = [run_b(agent, opts) for _ in range(opts.repeat)]
        split = "+".join(str(n) for n in agent.processed(queue_name, k))
        a_runs = []
        for _ in range(opts.repeat):
            got = agent.call("run", task="noop", arglists=[[]] * opts.a_tasks, timeout=600.0)
            a_runs.append(opts.a_tasks / got["seconds"])
        b_after_a = run_b(agent, opts)
        log(f"{k} node(s): B {b_runs} s (tasks per node {split}), A {a_runs} tasks/s, "
            f"B after A {b_after_a} s")
        return {"b": statistics.median(b_runs), "a": statistics.median(a_runs),
                "b_after_a": b_after_a, "split": split}
    finally:
        agent.close()
        for proc in procs:
            bed.net.stop(proc)


def render(rows: dict[int, dict[str, Any]], opts: argparse.Namespace) -> str:
    base, tasks = rows[1]["b"], opts.primes_below // opts.primes_step
    lines = ["| nodes (1 proc each) | B wall s | B tasks/s | B speedup | B tasks per node "
             "| A no-op tasks/s | B again after A, wall s |", "|---|---|---|---|---|---|---|"]
    for k, row in rows.items():
        lines.append(f"| {k} | {row['b']:.2f} | {tasks / row['b']:.1f} | "
                     f"{base / row['b']:.2f}x | {row['split']} | {row['a']:,.0f} | "
                     f"{row['b_after_a']:.2f} |")
    cpus = len(os.sched_getaffinity(0))
    lines += ["", f"B = primes below {opts.primes_below:,} in {tasks} tasks (count checked), "
              f"on fresh nodes; A = {opts.a_tasks:,} no-op tasks submitted one by one; "
              f"medians of {opts.repeat}; tasks per node: all B runs on fresh nodes, from "
              "their heartbeats; the last column is one more B on the same nodes.",
              f"Conditions: {cpus} CPU(s) shared by Redis, the producer and every node "
              "(each its own network namespace on one bridge, 10.231.x.0/24 veths, no "
              "added delay). B is CPU-bound: it can grow only up to the core count, so a "
              "third node adds a process but no core. A is bound by the per-task work of "
              "the producer and Redis on those same cores, not by the number of nodes."]
    return "\n".join(lines)


def bench(opts: argparse.Namespace) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tqmh-") as tmp, Topology() as net:
        bed = HostSet(net, Path(tmp), nodes=3)
        bed.start_redis()
        log(f"hosts on {net.subnet}.0/24, Redis at {bed.url}")
        rows = {k: measure(bed, k, opts) for k in (1, 2, 3)}
    print(render(rows, opts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    agent = sub.add_parser("agent", help="(internal) the producer agent")
    agent.add_argument("--url", required=True)
    agent.add_argument("--queue", default="default")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    if opts.cmd == "agent":
        agent_main(opts.url, opts.queue)
        return
    from netns import problem

    why = problem()
    if why:
        parser.exit(2, f"bench_multihost: {why}\n")
    opts.primes_below, opts.primes_step = (300_000, 25_000) if opts.quick else (3_000_000, 50_000)
    opts.a_tasks = 200 if opts.quick else 2_000
    opts.repeat = 1 if opts.quick else max(1, opts.repeat)
    bench(opts)


if __name__ == "__main__":
    main()
