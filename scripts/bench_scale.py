#!/usr/bin/env python3
"""How cost grows: taskq as the work grows, in one run, as a table and a PNG plot.

    python scripts/bench_scale.py                 # default sizes (a few minutes), own Redis
    python scripts/bench_scale.py --quick         # tiny sizes (< 30 s), a smoke run for CI
    python scripts/bench_scale.py --full          # adds the 5M-task backlog
    python scripts/bench_scale.py --url redis://host:6379/15 --plot /tmp/scale.png

Sections (each on fresh queues of its own Redis; nodes are ``python -m taskq worker``):

  backlog   enqueue rate (``Client.send_many`` of a probe) and claim rate (``XREADGROUP
            COUNT 100`` of the probe, claim only) with 0, 100k, 1M (5M) tasks waiting;
            Redis memory per waiting task (``used_memory`` delta over the fill / n)
  pending   completion throughput (one submit per no-op, all results held) with 10 vs
            10,000 entries pending under another consumer, and the time per call of
            renew.lua (those entries listed) and reclaim.lua (a sweep that finds none expired)
  nodes     1, 2, 4 nodes of 1 process: primes chunks (count checked) and no-op submits;
            Redis commands and bytes (in + out) per task, and idle commands/s per node
  payload   no-op submits with a string argument of 100 B, 10 KB, 1 MB
  results   memory per stored result, and the TTL sweep: used_memory until it returns

Every figure is from the server's own INFO where it can be (commandstats counts a
script's inner calls).  With ``--url`` other traffic on that server skews the Redis-cost
rows.  Every process it starts is stopped on exit; the table goes to stdout, progress
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # run from a checkout; bench.py's process helpers
    if _p not in sys.path:
        sys.path.insert(1, _p)

import redis  # noqa: E402
from bench import Procs, check_alive, cpu_busy, log, log_tail, run_environment  # noqa: E402

import taskq  # noqa: E402
from taskq.broker.queue import RENEW_SLICE  # noqa: E402

PRIME_COUNTS = {1_000_000: 78_498, 200_000: 17_984}
REPEAT = 3  # timed runs per node count (median); the Redis cost is summed over them
OWN_INFO = 2  # the INFO calls server_counts() itself adds between two readings


@dataclass(frozen=True)
class Sizes:
    backlogs: tuple[int, ...]
    probe: int                      # tasks enqueued and claimed at each backlog
    pending: tuple[int, ...]        # pending-list sizes
    pending_tasks: int              # completions measured at each pending size
    script_calls: int               # renew/reclaim calls timed per size
    a_tasks: int                    # no-op submits per node count
    primes_below: int
    primes_step: int
    nodes: tuple[int, ...]
    payloads: tuple[tuple[int, int], ...]   # (argument bytes, tasks)
    results: int
    result_ttl: float


QUICK = Sizes((0, 20_000), 2_000, (10, 1_000), 300, 5, 300, 200_000, 25_000, (1, 2),
              ((100, 300), (10_000, 200), (1_000_000, 3)), 1_000, 2.0)
DEFAULT = Sizes((0, 100_000, 1_000_000), 20_000, (10, 10_000), 3_000, 20, 3_000,
                1_000_000, 50_000, (1, 2, 4), ((100, 3_000), (10_000, 2_000), (1_000_000, 30)),
                20_000, 5.0)
FULL = Sizes((*DEFAULT.backlogs, 5_000_000), *list(DEFAULT.__dict__.values())[1:])


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, condition: str, metric: str, value: str) -> None:
        self.rows.append((section, condition, metric, value))
        log(f"{section} {condition}: {metric} = {value}")

    def table(self) -> str:
        head = ("section", "condition", "metric", "value")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        def line(r: tuple[str, ...]) -> str:
            return "  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=False)),
                              r[3].rjust(widths[3])]).rstrip()
        out, last = [line(head), "  ".join("-" * w for w in widths)], ""
        for r in self.rows:
            out.append(line((r[0] if r[0] != last else "", *r[1:])))
            last = r[0]
        return "\n".join(out)


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


class Scale:
    """The runs, against one Redis; nodes started through ``procs``."""

    def __init__(self, url: str, sizes: Sizes, procs: Procs) -> None:
        self.url, self.sizes, self.procs = url, sizes, procs
        self.redis = redis.Redis.from_url(url)
        self.report = Report()
        self.run_id = os.urandom(3).hex()
        self._n = 0

    # -- plumbing

    def queue(self, tag: str) -> str:
        self._n += 1
        return f"scale-{self.run_id}-{tag}-{self._n}"

    def forget(self, queue: str) -> None:
        self.redis.delete(*(f"taskq:{{{queue}}}:{k}" for k in ("stream", "stats", "delayed", "dead")))
        self.redis.srem("taskq:queues", queue)

    def used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def server_counts(self) -> tuple[int, int]:
        """(commands run, bytes in + out) so far, server-side."""
        calls = sum(int(v["calls"]) for v in self.redis.info("commandstats").values())
        stats = self.redis.info("stats")
        return calls, int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])

    def start_nodes(self, queue: str, n: int, procs: int, **env: str) -> list[subprocess.Popen[bytes]]:
        environ = {**os.environ, "TASKQ_RESULT_TTL": "600", **env}
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, environ.get("PYTHONPATH")) if p)
        nodes = [self.procs.start([sys.executable, "-m", "taskq", "--url", self.url, "worker",
                                   "--procs", str(procs), "--queue", queue, "--log-level", "warning"],
                                  "taskq-worker", env=environ) for _ in range(n)]
        end = time.monotonic() + 30
        for proc in nodes:  # until each has heartbeated (its id names its pid)
            marker = f":{proc.pid}:".encode()
            while not any(marker in m for m in self.redis.zrange("taskq:nodes", 0, -1)):
                check_alive(proc, "taskq worker")
                if time.monotonic() > end:
                    raise RuntimeError(f"taskq worker did not come up:\n{log_tail(proc)}")
                time.sleep(0.02)
        return nodes

    @contextlib.contextmanager
    def nodes(self, tag: str, n: int = 1, procs: int = 2, queue: str | None = None,
              **env: str) -> Iterator[tuple[str, taskq.Client, Callable[[], None]]]:
        """``n`` nodes on a fresh queue (or ``queue``) and a warm client: (queue, client,
        alive-check). The queue's keys are deleted after."""
        queue = queue or self.queue(tag)
        started = self.start_nodes(queue, n, procs, **env)
        try:
            with taskq.Client(self.url, queue=queue, result_ttl=600) as c:
                for _ in range(20 * n):  # listener, group, every node's pool warm
                    c.submit("noop").result(timeout=60)
                def alive() -> None:
                    for p in started:
                        check_alive(p, "taskq worker")
                yield queue, c, alive
        finally:
            for p in started:
                self.procs.stop(p)
            self.forget(queue)

    def fill(self, c: taskq.Client, n: int, chunk: int = 50_000) -> float:
        """Enqueue ``n`` no-ops with send_many (their batch hashes dropped); seconds taken."""
        t0 = time.perf_counter()
        for i in range(0, n, chunk):
            batch = c.send_many("noop", [[] for _ in range(min(chunk, n - i))])
            self.redis.delete(c.broker.keys.batch(batch.id))
        return time.perf_counter() - t0

    def claim(self, stream: str, consumer: str, n: int, ack: bool) -> float:
        """XREADGROUP COUNT 100 until ``n`` entries are claimed; seconds of the claims only."""
        spent, got = 0.0, 0
        while got < n:
            t0 = time.perf_counter()
            reply: Any = self.redis.xreadgroup("workers", consumer, {stream: ">"}, count=min(100, n - got))
            spent += time.perf_counter() - t0
            ids = [eid for _, entries in reply for eid, _ in entries]
            if not ids:
                raise RuntimeError(f"the stream ran dry after {got} of {n} claims")
            got += len(ids)
            if ack:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xack(stream, "workers", *ids)
                pipe.xdel(stream, *ids)
                pipe.execute()
        return spent

    def submits(self, c: taskq.Client, n: int, *args: Any) -> float:
        """``n`` submits, every result held; seconds."""
        t0 = time.perf_counter()
        futures = [c.submit("noop", *args) for _ in range(n)]
        for f in futures:
            f.result(timeout=600)
        return time.perf_counter() - t0

    # -- the sections

    def backlog(self) -> None:
        s, rep = self.sizes, self.report
        queue = self.queue("backlog")
        points: list[tuple[int, float, float, float]] = []
        with taskq.Client(self.url, queue=queue, result_ttl=600) as c:
            c.broker.ensure_group()
            stream, waiting, mem_per = c.broker.keys.stream, 0, 0.0
            try:
                for level in s.backlogs:
                    if level > waiting:
                        before = self.used_memory()
                        log(f"backlog: filling {level - waiting:,} tasks")
                        self.fill(c, level - waiting)
                        mem_per = (self.used_memory() - before) / (level - waiting)
                        waiting = level
                    enq = self.fill(c, s.probe, chunk=s.probe)
                    claimed = self.claim(stream, "scale-claimer", s.probe, ack=True)
                    assert self.redis.xlen(stream) == waiting, "the backlog changed under the probe"
                    cond = f"{level:,} waiting"
                    rep.add("backlog", cond, f"enqueue (send_many of {s.probe:,})", rate(s.probe, enq))
                    rep.add("backlog", cond, "claim (XREADGROUP COUNT 100)", rate(s.probe, claimed))
                    if level:
                        rep.add("backlog", cond, "Redis memory per waiting task", f"{mem_per:.0f} B")
                    points.append((level, s.probe / enq, s.probe / claimed, mem_per))
            finally:
                self.forget(queue)
        rep.data["backlog"] = points

    def pending(self) -> None:
        s, rep = self.sizes, self.report
        points: list[tuple[int, float, float, float]] = []
        for size in s.pending:
            queue, ghost = self.queue(f"pending{size}"), "scale-parked"
            with taskq.Client(self.url, queue=queue, result_ttl=600) as parker:
                parker.broker.ensure_group()
                self.fill(parker, size)  # parked before any node runs: pending, never acked
                self.claim(parker.broker.keys.stream, ghost, size, ack=False)
            # the lease outlasts the run: the node must not reclaim the parked entries
            with self.nodes("", queue=queue, TASKQ_LEASE="3600") as (_, c, alive):
                ids: list[bytes] = c.broker.pending_ids(ghost)
                assert len(ids) == size, f"{len(ids)} pending, wanted {size}"
                renew, renew_one, reclaim = [], [], []
                one_call = ids[:RENEW_SLICE]  # the most one renew.lua call is given
                for _ in range(s.script_calls):
                    t0 = time.perf_counter()
                    renewed = c.broker.renew(ghost, ids)
                    renew.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    c.broker.renew(ghost, one_call)
                    renew_one.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    taken = c.broker.reclaim("scale-sweeper", 3600.0, 100)
                    reclaim.append(time.perf_counter() - t0)
                    assert renewed == size and not taken, (renewed, taken)
                dt = self.submits(c, s.pending_tasks)
                alive()
                cond = f"{size:,} pending"
                r_ms, s_ms = statistics.median(renew) * 1e3, statistics.median(reclaim) * 1e3
                rep.add("pending", cond, f"completions ({s.pending_tasks:,} submits, 1 node x 2)",
                        rate(s.pending_tasks, dt))
                rep.add("pending", cond, "renew, all listed (in calls of ≤ 1,000)", f"{r_ms:.3f} ms")
                rep.add("pending", cond, f"renew.lua, longest call ({len(one_call):,} listed)",
                        f"{statistics.median(renew_one) * 1e3:.3f} ms")
                rep.add("pending", cond, "reclaim.lua per call (none expired)", f"{s_ms:.3f} ms")
                points.append((size, s.pending_tasks / dt, r_ms, s_ms))
        rep.data["pending"] = points

    def node_counts(self) -> None:
        s, rep = self.sizes, self.report
        starts = list(range(0, s.primes_below, s.primes_step))
        ends = [min(a + s.primes_step, s.primes_below) for a in starts]
        points: list[tuple[int, float, float, float, float, float]] = []
        for n in s.nodes:
            with self.nodes(f"nodes{n}", n=n, procs=1) as (_, c, alive):
                cpus = []
                for _ in range(1 + REPEAT):  # the first map on fresh nodes is slower: not timed
                    t0 = time.perf_counter()
                    found = sum(c.map("primes", starts, ends, timeout=600))
                    cpus.append(time.perf_counter() - t0)
                    assert found == PRIME_COUNTS[s.primes_below], f"primes: {found}"
                cpu = statistics.median(cpus[1:])
                calls0, bytes0 = self.server_counts()
                a = statistics.median(self.submits(c, s.a_tasks) for _ in range(REPEAT))
                calls1, bytes1 = self.server_counts()
                time.sleep(1.0)  # every node idle: what each costs the server just waiting
                calls2, _ = self.server_counts()
                alive()
            cond = f"{n} node{'s' if n > 1 else ''} x 1 proc"
            tasks = REPEAT * s.a_tasks
            per_task, per_bytes = (calls1 - calls0 - OWN_INFO) / tasks, (bytes1 - bytes0) / tasks
            rep.add("nodes", cond, f"primes < {s.primes_below:,} ({len(starts)} chunks, median of {REPEAT})",
                    f"{cpu:.2f} s, {len(starts) / cpu:.1f} chunks/s")
            rep.add("nodes", cond, f"no-op submits ({s.a_tasks:,}, median of {REPEAT})",
                    rate(s.a_tasks, a))
            rep.add("nodes", cond, "Redis commands / bytes per no-op",
                    f"{per_task:.2f} / {per_bytes:,.0f} B")
            idle = (calls2 - calls1 - OWN_INFO) / n
            rep.add("nodes", cond, "idle Redis commands/s per node (+1 idle client)", f"{idle:.1f}")
            points.append((n, len(starts) / cpu, s.a_tasks / a, per_task, per_bytes, idle))
        rep.data["nodes"] = points

    def payload(self) -> None:
        rep, points = self.report, []
        with self.nodes("payload") as (_, c, alive):
            for size, n in self.sizes.payloads:
                arg = "x" * size
                self.submits(c, 1, arg)  # warm at this size
                dt = self.submits(c, n, arg)
                alive()
                rep.add("payload", f"{size:,} B argument", f"no-op submits ({n:,})",
                        f"{n / dt:,.0f}/s, {n * size / dt / 1e6:.1f} MB/s")
                points.append((size, n / dt))
        rep.data["payload"] = points

    def results(self) -> None:
        s, rep = self.sizes, self.report
        ttl = s.result_ttl
        with self.nodes("results", TASKQ_RESULT_TTL=f"{ttl:g}") as (queue, c, alive):
            def stored() -> int:
                return sum(1 for _ in self.redis.scan_iter(f"taskq:{{{queue}}}:result:*", count=1000))
            end = time.monotonic() + ttl + 30
            while stored() and time.monotonic() < end:  # the warm-up's results gone first
                time.sleep(0.1)
            mem0, t0 = self.used_memory(), time.monotonic()
            self.submits(c, s.results)
            alive()
            kept, mem1 = stored(), self.used_memory()
            timeline = [(0.0, mem0), (time.monotonic() - t0, mem1)]
            while stored() and time.monotonic() - t0 < ttl + 60:
                time.sleep(0.1)
                timeline.append((time.monotonic() - t0, self.used_memory()))
            freed_at = time.monotonic() - t0
            for _ in range(10):  # a second more: what the sweep left behind
                time.sleep(0.1)
                timeline.append((time.monotonic() - t0, self.used_memory()))
            mem2 = timeline[-1][1]
        rep.add("results", f"{s.results:,} no-op results", "result keys stored", f"{kept:,}")
        rep.add("results", f"TTL {ttl:g} s", "Redis memory per stored result",
                f"{(mem1 - mem0) / max(1, kept):.0f} B")
        rep.add("results", f"TTL {ttl:g} s", "all expired (from first submit)", f"{freed_at:.1f} s")
        rep.add("results", f"TTL {ttl:g} s", "used_memory after sweep vs before",
                f"{(mem2 - mem0) / 1024:+,.0f} KiB of {(mem1 - mem0) / 1024:,.0f} KiB")
        rep.data["results"] = {"ttl": ttl, "timeline": timeline, "base": mem0}


def conditions(r: redis.Redis, where: str, sizes: Sizes, mode: str) -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    version = r.info("server").get("redis_version")
    return "\n".join([
        f"taskq scaling benchmark ({mode} sizes), {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}",
        f"redis: {where} (redis-server {version}), redis-py {redis.__version__}; "
        f"taskq {taskq.__version__}",
        f"sizes: backlogs {', '.join(f'{b:,}' for b in sizes.backlogs)} (probe {sizes.probe:,}); "
        f"pending {', '.join(f'{p:,}' for p in sizes.pending)}; nodes {sizes.nodes}; "
        f"payloads {', '.join(f'{b:,} B x {n:,}' for b, n in sizes.payloads)}; "
        f"{sizes.results:,} results, TTL {sizes.result_ttl:g} s",
        f"nodes: {os.cpu_count()} cores, so CPU-bound throughput cannot grow past "
        f"{os.cpu_count()} single-process nodes; past that the per-node Redis cost is what counts",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="How taskq's cost grows with the work.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=(__doc__ or "").split("\n\n", 2)[2])
    p.add_argument("--url", help="use this Redis (never db 0 of a shared one) instead of an embedded one")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes (< 30 s), a smoke run")
    size.add_argument("--full", action="store_true", help="default sizes plus a 5M-task backlog")
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "bench_scale.png"),
                   help="PNG to write (default docs/bench_scale.png)")
    p.add_argument("--no-plot", action="store_true", help="table only (no matplotlib needed)")
    opts = p.parse_args(argv)
    if opts.url:
        try:
            db = redis.Redis.from_url(opts.url).connection_pool.connection_kwargs.get("db", 0)
        except ValueError as exc:
            p.error(f"bad --url: {exc}")
        if int(db or 0) == 0:
            p.error("--url must name a database other than 0 (e.g. redis://host:6379/15)")
    if not opts.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("matplotlib is needed for the plot: pip install 'taskq[bench]' (or --no-plot)")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    sizes, mode = (QUICK, "quick") if opts.quick else (FULL, "full") if opts.full else (DEFAULT, "default")
    with run_environment(opts.url, "taskq-scale-") as (procs, url, where):
        busy = cpu_busy()
        scale = Scale(url, sizes, procs)
        for section in (scale.backlog, scale.pending, scale.node_counts, scale.payload, scale.results):
            log(f"-- {section.__name__}")
            section()
        head = conditions(scale.redis, where, sizes, mode)
        if busy >= 0:
            head += (f"\nother load: {100 * busy:.0f}% of all CPUs busy in the second before the run; "
                     f"1-min load average {os.getloadavg()[0]:.2f} at end")
        print(head)
        print()
        print(scale.report.table())
        if not opts.no_plot:
            from bench_scale_plot import plot

            plot(scale.report.data, opts.plot, head.split("\n", 1)[1])
            print(f"\nplot: {opts.plot}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
