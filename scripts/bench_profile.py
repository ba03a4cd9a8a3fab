#!/usr/bin/env python3
"""Where does a taskq task's time go?  CPU per task, per process, for workloads A, A-map, C, D.

    python scripts/bench_profile.py A                 # 10,000 no-ops, one submit each
    python scripts/bench_profile.py C --n 2000        # sequential submit→result round trips
    python scripts/bench_profile.py D --n 100000      # enqueue only, no worker
    python scripts/bench_profile.py A-map             # taskq.Pool(2).map(noop, range(1,000,000))
    python scripts/bench_profile.py A --pyspy /tmp/prof   # + py-spy flame graphs / stacks
    python scripts/bench_profile.py A --cprofile      # + cProfile of the producer process

It starts an embedded Redis (or uses ``--url``) and, except for D, one worker node
(``python -m taskq worker --procs 2``), runs the workload once to warm up and once
measured, and prints for each process (producer, node parent, pool children,
redis-server) the CPU microseconds per task (user+sys, from /proc via psutil), plus
Redis's own per-command accounting (INFO commandstats) per task.  With ``--pyspy DIR``
it also samples the producer and the node parent with py-spy (``pip install py-spy``)
and writes ``DIR/<who>.svg`` and ``DIR/<who>.txt`` (collapsed stacks), and prints the
heaviest frames.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

import taskq  # noqa: E402


def cpu_of(proc: psutil.Process) -> tuple[float, float]:
    """(user, system) CPU seconds."""
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user), float(t.system)
    return 0.0, 0.0


class Meter:
    """CPU seconds of each role's processes between start() and stop()."""

    def __init__(self, roles: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.roles = roles
        self.before: dict[str, dict[int, tuple[float, float]]] = {}
        self.result: dict[str, tuple[float, float]] = {}

    def _sample(self) -> dict[str, dict[int, tuple[float, float]]]:
        return {role: {p.pid: cpu_of(p) for p in get()} for role, get in self.roles.items()}

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> None:
        after = self._sample()
        for role, pids in after.items():
            old = self.before[role]
            user = sum(u - old.get(pid, (0.0, 0.0))[0] for pid, (u, _) in pids.items())
            system = sum(s - old.get(pid, (0.0, 0.0))[1] for pid, (_, s) in pids.items())
            self.result[role] = (user, system)


def commandstats(r: redis.Redis) -> dict[str, tuple[int, float]]:
    raw = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in raw.items()}


@contextlib.contextmanager
def pyspy(pid: int, path: str, threads: bool = True) -> Iterator[None]:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    procs = []
    for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
        args = [exe, "record", "--pid", str(pid), "--rate", "500", "--nonblocking",
                "--format", fmt, "--output", f"{path}.{ext}"]
        if threads:
            args.append("--threads")
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def summarize_stacks(path: str, top: int = 18) -> str:
    """Heaviest frames in a py-spy raw (collapsed) file: self and inclusive share."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return f"(no {path})"
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        self_count[frames[-1]] += count
        for f in set(frames[1:]):
            incl[f] += count
    if not total:
        return "(no samples)"
    out = [f"  {total} samples; by thread: " + ", ".join(
        f"{t} {100 * c / total:.0f}%" for t, c in threads.most_common(6))]
    out.append("  self (leaf) frames:")
    out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in self_count.most_common(top)]
    out.append("  inclusive:")
    out += [f"    {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=["A", "A-map", "C", "D"])
    ap.add_argument("--n", type=int, default=None,
                    help="tasks (A 10,000; A-map 1,000,000 items; C 2,000; D 100,000)")
    ap.add_argument("--url")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--pyspy", metavar="DIR", help="sample producer and node parent with py-spy")
    ap.add_argument("--cprofile", action="store_true", help="cProfile the producer's main thread")
    opts = ap.parse_args()
    n = opts.n or {"A": 10_000, "A-map": 1_000_000, "C": 2_000, "D": 100_000}[opts.workload]

    server = None
    if opts.url:
        url = opts.url
    else:
        from taskq.local.embedded import EmbeddedRedis

        server = EmbeddedRedis(port=0).start()
        url = server.url
    r = redis.Redis.from_url(url)
    redis_pid = int(r.info("server")["process_id"])
    queue = f"prof-{os.urandom(3).hex()}"
    node = None
    try:
        if opts.workload != "D":
            env = {**os.environ, "TASKQ_RESULT_TTL": "600",
                   "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
            node = subprocess.Popen(
                [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", str(opts.procs),
                 "--queue", queue, "--log-level", "warning"], env=env, cwd=ROOT,
                start_new_session=True)
            marker = f":{node.pid}:".encode()
            end = time.monotonic() + 30
            while not any(marker in m for m in r.zrange("taskq:nodes", 0, -1)):
                if node.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("the worker node did not come up")
                time.sleep(0.02)
        node_ps = psutil.Process(node.pid) if node else None
        roles: dict[str, Callable[[], list[psutil.Process]]] = {
            "producer (all threads)": lambda: [psutil.Process()],
            "node parent": lambda: [node_ps] if node_ps else [],
            "pool children": lambda: node_ps.children() if node_ps else [],
            "redis-server": lambda: [psutil.Process(redis_pid)],
        }
        client = taskq.Client(url, queue=queue, result_ttl=600)

        def run_a(count: int) -> None:
            futures = [client.submit("noop") for _ in range(count)]
            for f in futures:
                f.result(timeout=300)

        def run_c(count: int) -> None:
            for _ in range(count):
                client.submit("noop").result(timeout=60)

        def run_d(count: int) -> None:
            client.send_many("noop", [[] for _ in range(count)])

        def run_map(count: int) -> None:
            from taskq.tasks import noop

            pool = taskq.Pool(processes=opts.procs, url=url, queue=queue)
            try:
                assert len(pool.map(noop, range(count))) == count
            finally:
                pool.close()
                pool.join()

        run = {"A": run_a, "A-map": run_map, "C": run_c, "D": run_d}[opts.workload]
        run(min(n, 2000) if opts.workload != "D" else 10)  # warm up (D: the stream and group)
        if opts.workload == "D":
            r.delete(client.broker.keys.stream)
            client.broker.ensure_group()
        meter = Meter(roles)
        stats0 = commandstats(r)
        spies: list[Any] = []
        if opts.pyspy:
            os.makedirs(opts.pyspy, exist_ok=True)
            stack = contextlib.ExitStack()
            stack.enter_context(pyspy(os.getpid(), os.path.join(opts.pyspy, f"{opts.workload}-producer")))
            if node:
                stack.enter_context(pyspy(node.pid, os.path.join(opts.pyspy, f"{opts.workload}-node")))
            spies.append(stack)
        prof = cProfile.Profile() if opts.cprofile else None
        meter.start()
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        run(n)
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
        meter.stop()
        stats1 = commandstats(r)
        for s in spies:
            s.close()
        client.close()

        print(f"workload {opts.workload}: {n:,} tasks in {wall:.3f} s = {n / wall:,.0f} tasks/s "
              f"({1e6 * wall / n:.1f} µs wall per task)")
        print("CPU per task (user + system):")
        total = 0.0
        for role, (user, system) in meter.result.items():
            secs = user + system
            total += secs
            print(f"  {role:<24} {1e6 * secs / n:8.1f} µs = {1e6 * user / n:7.1f} user + "
                  f"{1e6 * system / n:7.1f} sys  ({100 * secs / wall:5.1f}% of one core)")
        print(f"  {'total':<24} {1e6 * total / n:8.1f} µs   (2 cores = {2e6 * wall / n:.1f} µs "
              "of CPU available per task)")
        print("Redis commands per task (INFO commandstats; µs inside Redis):")
        rows = []
        for cmd, (calls, usec) in stats1.items():
            c0, u0 = stats0.get(cmd, (0, 0.0))
            if calls - c0 > 0:
                rows.append((usec - u0, cmd, calls - c0))
        for usec, cmd, calls in sorted(rows, reverse=True)[:12]:
            print(f"  {cmd:<14} {calls / n:8.4f} calls/task  {usec / n:7.2f} µs/task  "
                  f"({usec / calls:8.1f} µs/call)")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print("cProfile (producer main thread), by own time:")
            print(s.getvalue())
        if opts.pyspy:
            for who in ("producer", "node"):
                path = os.path.join(opts.pyspy, f"{opts.workload}-{who}.txt")
                if os.path.exists(path):
                    print(f"py-spy {who}: {path[:-4]}.svg")
                    print(summarize_stacks(path))
        return 0
    finally:
        if node is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        r.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
