#!/usr/bin/env python3
"""Chaos run: many tasks through real worker nodes while everything is broken on purpose.

    python scripts/chaos.py                 # 20,000 tasks, 3 nodes x 2 processes
    python scripts/chaos.py --quick         # about 2,000 tasks, fewer faults (CI, < 60 s)
    python scripts/chaos.py --quick --cluster     # over a 3-master + 3-replica Redis Cluster
    python scripts/chaos.py --quick --sentinel    # over a master + replica + Sentinel

It starts its own embedded Redis (AOF, appendfsync always) and N worker nodes as
subprocesses, enqueues the tasks in waves with ``taskq.Client`` (``send_many`` and
``submit_many``), and meanwhile, at progress points spread over the run:

* SIGKILLs whole nodes (and restarts them), SIGKILLs pool processes of live nodes;
* kills Redis with SIGKILL and restarts it on the same socket from its AOF; with
  ``--cluster`` / ``--sentinel`` (the topologies of scripts/topologies.py, as the tests
  start them) that fault is a failover of the queue's master instead: planned
  (``CLUSTER FAILOVER`` / ``SENTINEL FAILOVER``), or with ``--unplanned`` a SIGKILL of the
  master (its replica is promoted, the killed server comes back as a replica), run with
  ``--wait-replicas 1`` on nodes and producer so no acknowledged write can be lost;
* injects poison: tasks that os._exit() their pool process every time (they must fail
  with WorkerLostError after their one retry) and a task that SIGKILLs its node every
  time (it must be dead-lettered after --max-deliveries lost nodes);
* XADDs malformed entries (they must be dead-lettered, never run).

Every execution of a chaos task is appended to a file per process, outside Redis
(``scripts/chaos_tasks.py``), so duplicates are counted from facts. At the end it
prints one table and exits 1 if any task was lost, any duplicate count broke its bound,
anything hung or a process leaked.

Retries: the chaos task declares ``retries=3``. taskq applies a task's retry policy to
WorkerLostError too (its pool process died under it), so a task whose process the chaos
killed is retried, not failed; a task that kills its process every time exhausts its
retries and fails. Without retries such a task fails at once with WorkerLostError: not
lost (its failure is recorded), but not completed either.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path[:0] = [str(ROOT), str(SCRIPTS)]

import chaos_tasks as rt  # noqa: E402
from topologies import Cluster, SentinelSet  # noqa: E402

from taskq.broker import GROUP, Broker, connect  # noqa: E402
from taskq.broker.cluster import transient  # noqa: E402
from taskq.client import Client  # noqa: E402
from taskq.config import Settings  # noqa: E402
from taskq.local.embedded import EmbeddedRedis  # noqa: E402

QUEUE = "default"
GOOD, CHILD_POISON, NODE_POISON = "rel.work", "rel.poison_child", "rel.kill_node"
GARBAGE: list[dict[bytes, bytes]] = [
    {b"m": b"\xff\xfe not json"},
    {b"junk": b"no m field"},
    {b"m": b"[1, 2, 3]"},
    {b"m": b'{"t": "rel.work", "a": ["garbage-noid"]}'},
    {b"m": b'{"id": "g-unknown", "t": "no.such.task", "a": ["garbage-unknown"]}'},
    {b"m": b'{"id": "g-shape", "t": "rel.work", "a": {"token": "garbage-shape"}}'},
    {b"m": b'{"id": "g-pickle", "t": "", "a": [], "p": "gASVAAAAAAAAAAB9lC4="}'},
]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Node:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float
    killed: bool = False


@dataclass
class Stats:
    node_kills: int = 0
    poison_node_deaths: int = 0
    other_node_deaths: int = 0
    refused_starts: int = 0
    child_kills: int = 0
    redis_restarts: int = 0
    redis_down_s: float = 0.0
    in_flight_at_deaths: int = 0
    split_brain: int = 0
    split_failovers: int = 0
    recoveries: list[float] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.log_dir = workdir / "runs"
        self.log_dir.mkdir()
        self.server = EmbeddedRedis(appendonly=True, directory=str(workdir / "redis"))
        (workdir / "redis").mkdir()
        self.topology: Cluster | SentinelSet | None = (
            Cluster(workdir) if args.cluster else SentinelSet(workdir) if args.sentinel else None)
        self._url: str | None = None
        self.nodes: list[Node] = []
        self.stats = Stats()
        self.recovering: list[tuple[float, list[bytes]]] = []
        self.futures: list[Future[Any]] = []
        self.batches: list[str] = []
        self.good_ids: list[tuple[str, str]] = []  # (task id, token)
        self.poison_ids: list[str] = []
        self.node_poison_ids: list[str] = []
        self.r: redis.Redis | None = None
        self.client: Client | None = None

    @property
    def url(self) -> str:
        """The URL nodes and producer use (the embedded server's, read once it started:
        it is not readable while the server is down)."""
        if self._url is None:
            self._url = self.server.url if self.topology is None else self.topology.url
        return self._url

    # -- processes --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
        env["TASKQ_REL_LOG"] = str(self.log_dir)
        env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
        return env

    def start_node(self, slot: int) -> Node:
        a = self.args
        cmd = [sys.executable, "-m", "taskq", "--url", self.url, "worker",
               "--procs", str(a.procs), "--lease", str(a.lease), "--import", "chaos_tasks",
               "--max-deliveries", str(a.max_deliveries), "--shutdown-timeout", "10",
               "--log-level", "warning", *self.wait_replicas()]
        with open(self.workdir / f"node-{slot}.log", "ab") as out:
            # Own session: a Ctrl-C at the terminal goes to this script, which cleans up.
            proc = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        node = Node(slot, proc, time.monotonic())
        if slot < len(self.nodes):
            self.nodes[slot] = node
        else:
            self.nodes.append(node)
        return node

    def wait_replicas(self) -> list[str]:
        return ["--wait-replicas", "1"] if self.args.unplanned else []

    def children(self, node: Node) -> list[psutil.Process]:
        try:
            kids = psutil.Process(node.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return kids

    def redis_client(self) -> redis.Redis:
        if self.r is None and self.topology is not None:
            self.r = connect(self.url, socket_timeout=5)  # follows failovers
        if self.r is None:
            self.r = redis.Redis.from_url(self.url, socket_timeout=5,
                                          socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        return self.r

    # -- faults -----------------------------------------------------------------------

    def consumer_pending(self, pid: int) -> list[bytes]:
        """Entries pending under the node with this pid (its consumer name holds the pid)."""
        r = self.redis_client()
        stream = Broker(r, QUEUE).keys.stream
        ids: list[bytes] = []
        for c in r.xinfo_consumers(stream, GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            parts = name.split(":")
            if len(parts) >= 3 and parts[-2] == str(pid):
                rows: Any = r.xpending_range(stream, GROUP, "-", "+", 1_000_000, consumername=name)
                ids += [row["message_id"] for row in rows]
        return ids

    def after_death(self, node: Node, expected: bool) -> None:
        """Count what the dead node held (it can run again: the duplicate bound), start a
        replacement, and watch how long its tasks take to complete elsewhere."""
        pid = node.proc.pid
        held = self.until_redis(lambda: self.consumer_pending(pid))
        self.stats.in_flight_at_deaths += len(held)
        if expected:
            self.recovering.append((time.monotonic(), held))
        self.start_node(node.slot)

    def kill_node(self) -> bool:
        live = [n for n in self.nodes if n.proc.poll() is None and time.monotonic() - n.started > 1.0]
        if not live:
            return False
        node = self.rng.choice(live)
        node.killed = True
        node.proc.kill()
        node.proc.wait()
        self.stats.node_kills += 1
        log(f"SIGKILLed node {node.slot} (pid {node.proc.pid})")
        self.after_death(node, expected=True)
        return True

    def kill_child(self) -> bool:
        candidates = [(n, c) for n in self.nodes if n.proc.poll() is None for c in self.children(n)]
        if not candidates:
            return False
        node, child = self.rng.choice(candidates)
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
            self.stats.child_kills += 1
            log(f"SIGKILLed pool process {child.pid} of node {node.slot}")
            return True
        return False

    def restart_redis(self) -> None:
        if self.topology is not None:
            return self.failover(self.topology)
        down = self.rng.uniform(0.3, min(1.5, self.args.lease / 2))
        self.server.kill()
        t0 = time.monotonic()
        log(f"SIGKILLed Redis; restarting in {down:.1f} s")
        time.sleep(down)
        self.server.restart()
        self.stats.redis_down_s += time.monotonic() - t0
        self.stats.redis_restarts += 1

    def failover(self, topology: Cluster | SentinelSet) -> None:
        """The topologies' Redis fault: the queue's master fails over (counted as a
        restart; its duration as time down)."""
        t0 = time.monotonic()
        key = Broker(self.redis_client(), QUEUE).keys.stream
        if isinstance(topology, SentinelSet) and not self.args.unplanned:
            new = self.sentinel_failover(topology)
        elif self.args.unplanned:
            killed, new = topology.kill_master(key)
            log(f"SIGKILLed the master on port {killed}; {new} took over, {killed} is its replica")
        else:
            new = topology.failover(key)
            log(f"failed the queue's master over to port {new} (planned)")
        self.stats.redis_down_s += time.monotonic() - t0
        self.stats.redis_restarts += 1

    def sentinel_failover(self, topology: SentinelSet) -> int:
        """``SENTINEL FAILOVER``, measuring its split-brain window: Sentinel promotes the
        replica, switches its address a second later and demotes the old master ~10 s
        after that; completions the old master acknowledged after the promotion are lost
        with its data when it resyncs, and those tasks run again. Counted (old master's
        last ``done`` minus the promoted one's at promotion) into the duplicate bound."""
        stats = Broker(self.redis_client(), QUEUE).keys.stats
        old = topology.client(topology.master())
        replica = topology.client(topology.replica_port if topology.master() == topology.master_port
                                  else topology.master_port)
        done_old = int(old.hget(stats, "done") or 0)
        topology.sentinel().execute_command("SENTINEL FAILOVER", topology.NAME)
        while replica.execute_command("ROLE")[0] != b"master":
            time.sleep(0.01)
        at_promotion = int(replica.hget(stats, "done") or 0)
        while old.execute_command("ROLE")[0] == b"master":
            done_old = int(old.hget(stats, "done") or 0)
            time.sleep(0.05)
        self.stats.split_brain += max(0, done_old - at_promotion)
        self.stats.split_failovers += 1  # a delivery counted there may be lost too
        log(f"SENTINEL FAILOVER: the old master acknowledged {done_old - at_promotion} "
            "completion(s) after the promotion (lost with it: they run again)")
        topology.wait_linked()
        return topology.master()

    def inject_poison(self) -> None:
        token = f"poison{len(self.poison_ids)}"
        fut = self.producer().submit(CHILD_POISON, token)  # keeps its result, unlike send()
        self.futures.append(fut)
        self.poison_ids.append(fut.task_id)  # type: ignore[attr-defined]
        log(f"injected poison {token} (kills its pool process every time)")

    def inject_node_poison(self) -> None:
        token = f"nodepoison{len(self.node_poison_ids)}"
        fut = self.producer().submit(NODE_POISON, token)
        self.futures.append(fut)
        self.node_poison_ids.append(fut.task_id)  # type: ignore[attr-defined]
        log(f"injected poison {token} (kills its node every time)")

    def inject_garbage(self, n: int) -> None:
        r = self.redis_client()
        stream = Broker(r, QUEUE).keys.stream
        for i in range(n):
            r.xadd(stream, GARBAGE[i % len(GARBAGE)])  # type: ignore[arg-type]
        log(f"injected {n} malformed entries")

    def until_redis(self, fn: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except Exception as exc:  # an outage or a failover (MOVED, READONLY …)
                if not transient(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- producing ---------------------------------------------------------------------

    def producer(self) -> Client:
        if self.client is None:
            self.client = Client(settings=Settings.from_env(
                url=self.url, queues=(QUEUE,), wait_replicas=1 if self.args.unplanned else 0))
        return self.client

    def enqueue_wave(self, start: int, end: int, wave: int) -> None:
        client = self.producer()
        mean = self.args.task_ms / 1000
        arglists = [(f"c{i}", round(self.rng.uniform(0, 2 * mean), 4)) for i in range(start, end)]
        if wave % 2 == 0:  # fire-and-forget batch
            batch = client.send_many(GOOD, arglists, keep_results=True)
            ids = [f"{batch.id}.{i}" for i in range(len(arglists))]
            self.batches.append(batch.id)
        else:  # futures: the producer's reply listener has to live through the chaos too
            futures, b = client.submit_many(GOOD, arglists, batch=True)
            assert b is not None
            self.futures += futures
            self.batches.append(b.id)
            ids = [f"{b.id}.{i}" for i in range(len(arglists))]
        self.good_ids += [(tid, args[0]) for tid, args in zip(ids, arglists, strict=True)]

    # -- the run ------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        a = self.args
        events = (["node"] * a.node_kills + ["child"] * a.child_kills + ["redis"] * a.redis_restarts
                  + ["poison"] * a.poison + ["garbage"] * (1 if a.garbage else 0))
        self.rng.shuffle(events)
        # Node poison early: its nodes die max-deliveries times before it is dead-lettered.
        spread = [0.05 + 0.8 * (i + 1) / (len(events) + 1) for i in range(len(events))]
        plan = list(zip(spread, events, strict=True))
        if a.node_poison:
            plan.insert(0, (0.02, "node_poison"))
        return plan

    def progress(self) -> tuple[float, dict[str, int]]:
        info = Broker(self.redis_client(), QUEUE).info()
        finished = info["done"] + info["failed"]
        return finished / max(1, self.expected_outcomes()), info

    def expected_outcomes(self) -> int:
        return (self.args.tasks + self.args.poison + self.args.node_poison + self.args.garbage)

    def supervise(self) -> None:
        for node in list(self.nodes):
            code = node.proc.poll()
            if code is None or node.killed:
                continue
            out = (self.workdir / f"node-{node.slot}.log").read_text(errors="replace")
            if code == 1 and out.rstrip().endswith("Connection refused."):
                # `taskq worker` fails fast when Redis is unreachable AT STARTUP (it was
                # started just before a Redis kill); a supervisor starts it again.
                self.redis_client().ping()  # not before Redis is back
                self.stats.refused_starts += 1
                log(f"node {node.slot} could not reach Redis at startup: restarting it")
                self.start_node(node.slot)
                continue
            if str(node.proc.pid) in rt.read_log(self.log_dir, "killnode"):
                self.stats.poison_node_deaths += 1
                log(f"node {node.slot} (pid {node.proc.pid}) was killed by the node poison")
            else:
                self.stats.other_node_deaths += 1
                log(f"node {node.slot} exited by itself with code {code}: {out[-500:]}")
            node.killed = True
            self.after_death(node, expected=False)

    def check_recoveries(self) -> None:
        if not self.recovering:
            return
        r = self.redis_client()
        stream = Broker(r, QUEUE).keys.stream
        still = []
        for t0, ids in self.recovering:
            pipe = r.pipeline(transaction=False)
            for i in ids:
                pipe.xrange(stream, i, i)
            if any(pipe.execute()):
                still.append((t0, ids))
            else:
                self.stats.recoveries.append(time.monotonic() - t0)
                log(f"the {len(ids)} task(s) of a killed node completed elsewhere "
                    f"{self.stats.recoveries[-1]:.2f} s after the kill")
        self.recovering = still

    def run(self) -> int:
        a = self.args
        self.start_redis()
        Broker(self.redis_client(), QUEUE).ensure_group()
        waves = max(1, a.waves)
        wave_size = -(-a.tasks // waves)
        bounds = [(i * wave_size, min(a.tasks, (i + 1) * wave_size)) for i in range(waves)]
        bounds = [b for b in bounds if b[0] < b[1]]
        self.enqueue_wave(*bounds[0], 0)
        next_wave = 1
        for slot in range(a.nodes):
            self.start_node(slot)
        plan = self.schedule()
        t_start = time.monotonic()
        deadline = t_start + a.timeout
        last_report = 0.0
        settled_since: float | None = None
        while True:
            now = time.monotonic()
            if now > deadline:
                self.stats.hung.append(f"work not finished within --timeout {a.timeout:g} s")
                break
            try:
                self.supervise()
                frac, info = self.progress()
                if next_wave < len(bounds) and info["queued"] < wave_size // 2:
                    self.enqueue_wave(*bounds[next_wave], next_wave)
                    next_wave += 1
                while plan and plan[0][0] <= frac:
                    _, event = plan.pop(0)
                    if event in ("node", "child") and not (
                            self.kill_node() if event == "node" else self.kill_child()):
                        plan.insert(0, (0.0, event))  # nothing to kill yet: soon
                        break
                    if event == "redis":
                        self.restart_redis()
                    elif event == "poison":
                        self.inject_poison()
                    elif event == "node_poison":
                        self.inject_node_poison()
                    elif event == "garbage":
                        self.inject_garbage(a.garbage)
                self.check_recoveries()
                if now - last_report > 2.0:
                    last_report = now
                    log(f"{info['done']}/{a.tasks} done, {info['failed']} failed, "
                        f"{info['in_flight']} in flight, {info['queued']} queued, "
                        f"{len(plan)} faults to go")
                settled = (not plan and next_wave >= len(bounds) and info["queued"] == 0
                           and info["in_flight"] == 0 and info["delayed"] == 0
                           and info["done"] + info["failed"] >= self.expected_outcomes()
                           and not self.recovering)
                if settled:
                    settled_since = settled_since or now
                    if now - settled_since > 0.5:
                        break
                else:
                    settled_since = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log(f"controller: Redis unavailable ({exc}); retrying")
            time.sleep(0.05)
        self.elapsed = time.monotonic() - t_start
        self.stop_nodes()
        return self.report()

    def start_redis(self) -> None:
        if self.topology is None:
            self.server.start()
            log(f"Redis at {self.url} (AOF, appendfsync always); workdir {self.workdir}")
        else:
            self.topology.create()
            log(f"{type(self.topology).__name__} at {self.url}; workdir {self.workdir}")

    def stop_redis(self) -> None:
        self.server.stop()
        if self.topology is not None:
            self.topology.stop()

    def stop_nodes(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                self.children(node)
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                code = node.proc.wait(timeout=20)
                if code != 0 and not node.killed:
                    self.stats.hung.append(f"node {node.slot} exited with {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.stats.hung.append(f"node {node.slot} (pid {node.proc.pid}) ignored SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()

    # -- the verdict ---------------------------------------------------------------------

    def report(self) -> int:
        a = self.args
        r = self.redis_client()
        broker = Broker(r, QUEUE)
        info = self.until_redis(broker.info)
        outcomes: dict[str, Any] = {}
        ids = [tid for tid, _ in self.good_ids] + self.poison_ids + self.node_poison_ids
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            raws: Any = r.mget([broker.keys.result(t) for t in chunk])
            outcomes.update({t: orjson.loads(raw) for t, raw in zip(chunk, raws, strict=True) if raw})
        runs = rt.read_log(self.log_dir)
        completed = sum(1 for tid, _ in self.good_ids if outcomes.get(tid, {}).get("ok"))
        failed_good = [(tid, outcomes[tid]["e"][0]) for tid, _ in self.good_ids
                       if tid in outcomes and not outcomes[tid]["ok"]]
        failed_lost = sum(1 for _, kind in failed_good if kind == "WorkerLostError")
        lost = [tid for tid, _ in self.good_ids if tid not in outcomes]
        lost_runs = sum(1 for tid, tok in self.good_ids if tid not in outcomes and runs.get(tok))
        failed_other = len(failed_good) - failed_lost
        extra = sum(runs[tok] - 1 for _, tok in self.good_ids if runs.get(tok, 0) > 1)
        twice = sum(1 for _, tok in self.good_ids if runs.get(tok, 0) > 1)
        never_ran_but_ok = sum(1 for tid, tok in self.good_ids
                               if outcomes.get(tid, {}).get("ok") and not runs.get(tok))
        # A rerun happens only where a node died holding the task, a process was killed
        # under it (then retried), or a node lost its lease while alive (its late report
        # is suppressed and counted).
        bound = (self.stats.in_flight_at_deaths + self.stats.child_kills + info["suppressed"]
                 + self.stats.split_brain)
        poison_ok = all(
            not outcomes.get(p, {"ok": True})["ok"] and outcomes[p]["e"][0] == "WorkerLostError"
            for p in self.poison_ids)
        poison_runs = [runs.get(f"poison{i}", 0) for i in range(len(self.poison_ids))]
        dead = broker.dead_entries(100_000)
        reasons = Counter(_reason_kind(f[b"reason"].decode(errors="replace")) for _, f in dead)
        node_poison_dead = sum(1 for p in self.node_poison_ids
                               if outcomes.get(p, {}).get("e", [""])[0] == "DeadLetteredError")
        node_poison_runs = [runs.get(f"nodepoison{i}", 0) for i in range(len(self.node_poison_ids))]
        garbage_ran = sum(n for tok, n in runs.items() if tok.startswith("garbage"))
        unresolved = sum(1 for f in self.futures if not f.done())
        batch_ok = True
        for b in self.batches:
            st = broker.batch_status(b)
            if int(st.get("done", 0)) + int(st.get("failed", 0)) != int(st.get("total", -1)):
                batch_ok = False
        if self.client is not None:
            self.client.close()
            self.client = None
        r.close()
        self.stop_redis()
        self.check_leaks()
        s = self.stats
        problems = []
        if lost:
            problems.append(f"{len(lost)} task(s) lost, e.g. {lost[:3]}")
        if failed_other:
            problems.append(f"{failed_other} good task(s) failed for another reason than a killed "
                            f"process: {Counter(k for _, k in failed_good).most_common(3)}")
        if extra > bound:
            problems.append(f"{extra} duplicate executions exceed the bound {bound}")
        if never_ran_but_ok:
            problems.append(f"{never_ran_but_ok} task(s) completed without a recorded execution")
        if not poison_ok or any(n > 2 for n in poison_runs):
            problems.append(f"process-killing poison did not fail after its retry: runs {poison_runs}")
        if node_poison_dead != len(self.node_poison_ids) or any(
                n > a.max_deliveries + s.split_failovers for n in node_poison_runs):
            problems.append(f"node-killing poison not dead-lettered within {a.max_deliveries} "
                            f"runs: runs {node_poison_runs}")
        if reasons.get("malformed", 0) + reasons.get("unknown task", 0) + reasons.get(
                "untrusted", 0) < a.garbage or garbage_ran:
            problems.append(f"malformed entries not all dead-lettered: {dict(reasons)}")
        if unresolved:
            stuck = [f.task_id for f in self.futures if not f.done()]  # type: ignore[attr-defined]
            problems.append(f"{unresolved} producer future(s) never resolved, e.g. {stuck[:3]} "
                            f"(outcome stored: {[t in outcomes for t in stuck[:3]]})")
        if not batch_ok:
            problems.append("batch counters do not add up")
        if self.recovering:
            problems.append("a killed node's tasks never completed elsewhere")
        if s.other_node_deaths:
            problems.append(f"{s.other_node_deaths} node(s) died unprovoked")
        problems += s.hung + s.leaked
        rows = [
            ("tasks enqueued (good)", f"{a.tasks}"),
            ("completed", f"{completed}"),
            ("lost (no success outcome)", f"{len(lost)}" + (f" ({lost_runs} of them ran)" if lost else "")),
            ("failed by injected child kill", f"{failed_lost} (retries exhausted)"),
            ("failed otherwise", f"{failed_other}"),
            ("executed more than once", f"{twice} tasks, {extra} extra runs (bound {bound} = "
             f"{s.in_flight_at_deaths} in flight at node deaths + {s.child_kills} child kills"
             f" + {info['suppressed']} late reports"
             + (f" + {s.split_brain} acknowledged by a demoted master" if s.split_brain else "")
             + ")"),
            ("retried (stats)", f"{info['retried']}"),
            ("late reports suppressed", f"{info['suppressed']}"),
            ("poison, kills its process", f"{len(self.poison_ids)} injected, runs {poison_runs}, "
             f"{'all failed WorkerLostError' if poison_ok else 'NOT all failed'}"),
            ("poison, kills its node", f"{len(self.node_poison_ids)} injected, runs "
             f"{node_poison_runs}, {node_poison_dead} dead-lettered"),
            ("malformed entries injected", f"{a.garbage}"),
            ("dead-lettered by reason", ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
             or "none"),
            ("node kills (SIGKILL)", f"{s.node_kills} (+ {s.poison_node_deaths} by the node poison"
             + (f"; {s.refused_starts} restarts refused: Redis down" if s.refused_starts else "")
             + ")"),
            ("pool process kills", f"{s.child_kills}"),
            (self.redis_fault(), f"{s.redis_restarts} ({s.redis_down_s:.1f} s down in all)"),
            ("longest recovery after a node kill",
             f"{max(s.recoveries):.2f} s (lease {a.lease:g} s)" if s.recoveries else "n/a"),
            ("producer futures", f"{len(self.futures) - unresolved}/{len(self.futures)} resolved"),
            ("hung", "; ".join(s.hung) or "no"),
            ("leaked processes", "; ".join(s.leaked) or "none"),
            ("wall time", f"{self.elapsed:.1f} s ({a.tasks / max(self.elapsed, 1e-9):.0f} tasks/s)"),
            ("verdict", "PASS" if not problems else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        line = "+" + "-" * (width + 2) + "+" + "-" * 72
        print(line)
        for k, v in rows:
            print(f"| {k:<{width}} | {v}")
        print(line)
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1 if problems else 0

    def check_leaks(self) -> None:
        """No process of this run may outlive it: nodes, pool processes, redis-server."""
        time.sleep(0.2)
        for p in self.ours():
            self.stats.leaked.append(f"pid {p.pid}: {' '.join(p.cmdline())[:80]}")
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    def ours(self) -> list[psutil.Process]:
        """Live processes of this run: their command line names the work directory (the
        nodes' --url and, inherited by fork, their pool processes'; redis-server's --dir,
        under the work directory for the topologies too)."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            if p.info["pid"] == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.info["cmdline"] or ())
            if str(self.workdir) in cmdline or self.url in cmdline:
                found.append(p)
        return found

    def cleanup(self) -> None:
        """Whatever happened: no node, pool process or server is left behind."""
        for node in self.nodes:
            if node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
        for p in self.ours():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.stop_redis()


    def redis_fault(self) -> str:
        """The table's name for the Redis fault of this topology."""
        if self.topology is None:
            return "Redis restarts (kill -9)"
        kind = "SIGKILL of the master" if self.args.unplanned else (
            "CLUSTER FAILOVER" if self.args.cluster else "SENTINEL FAILOVER")
        return f"failovers ({kind})"


def _reason_kind(reason: str) -> str:
    for kind in ("poison", "malformed", "unknown task", "untrusted", "exceeds"):
        if kind in reason:
            return kind
    return reason[:40]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI size: 2,000 tasks, 2 node kills, 8 child kills, 1 Redis restart")
    p.add_argument("--tasks", type=int, default=None, help="good tasks (default 20000)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--procs", type=int, default=2, help="pool processes per node")
    p.add_argument("--lease", type=float, default=None, help="seconds (default 3, quick 2)")
    p.add_argument("--task-ms", type=float, default=None,
                   help="mean task duration in ms (default 10, quick 20)")
    p.add_argument("--waves", type=int, default=10, help="the tasks are enqueued in this many waves")
    p.add_argument("--node-kills", type=int, default=None)
    p.add_argument("--child-kills", type=int, default=None)
    p.add_argument("--redis-restarts", type=int, default=None)
    p.add_argument("--poison", type=int, default=None, help="tasks that kill their process")
    p.add_argument("--node-poison", type=int, default=1, help="tasks that kill their node")
    p.add_argument("--max-deliveries", type=int, default=None, help="default 5, quick 3")
    p.add_argument("--garbage", type=int, default=None, help="malformed entries to XADD")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default 600, quick 100)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", action="store_true",
                       help="over a Redis Cluster (3 masters + 3 replicas): failovers, no restarts")
    where.add_argument("--sentinel", action="store_true",
                       help="over a master + replica + Sentinel: failovers, no restarts")
    p.add_argument("--unplanned", action="store_true",
                   help="with --cluster/--sentinel: SIGKILL the master (and --wait-replicas 1)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"tasks": 2000 if quick else 20000, "lease": 2.0 if quick else 3.0,
                "task_ms": 20.0 if quick else 10.0, "node_kills": 2 if quick else 5,
                "child_kills": 8 if quick else 20, "redis_restarts": 1 if quick else 2,
                "poison": 2 if quick else 3, "max_deliveries": 3 if quick else 5,
                "garbage": 7 if quick else 14, "timeout": 100.0 if quick else 600.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.unplanned and not (args.cluster or args.sentinel):
        p.error("--unplanned needs --cluster or --sentinel")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="taskq-chaos-"))
    log(f"seed {args.seed}: {args.tasks} tasks, {args.nodes} nodes x {args.procs} processes, "
        f"{args.node_kills} node kills, {args.child_kills} child kills, "
        f"{args.redis_restarts} Redis restarts")
    chaos = Chaos(args, workdir)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 2
    try:
        code = chaos.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    finally:
        chaos.cleanup()
        if args.keep or code not in (0, 130):
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
