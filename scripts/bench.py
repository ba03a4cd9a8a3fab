#!/usr/bin/env python3
"""Benchmark taskq against multiprocessing.Pool and RQ, in one run, on one machine.

    python scripts/bench.py                     # everything, 3 repeats, own embedded Redis
    python scripts/bench.py --only A,C --repeat 5
    python scripts/bench.py --quick             # tiny sizes, 1 repeat, no RQ, no F (CI smoke)
    python scripts/bench.py --url redis://host:6379/15   # an existing server (keys are namespaced)

Systems: ``multiprocessing.Pool(P)`` (the local baseline every taskq figure is divided
by), taskq (``python -m taskq worker --procs P`` + ``taskq.Client``), and RQ
(``rq worker-pool -n P``, with the default fork-per-job worker and with
``--worker-class rq.worker.SimpleWorker``).  Workloads (the full-size numbers):

  A      10,000 no-op tasks submitted one by one, until every result is held (tasks/s)
  A-map  Pool(P).map(noop, range(1,000,000)) (items/s); needs taskq.Pool
  B      primes below 3,000,000 in 60 tasks of 50,000 (wall s; checked count)
  C      200 sequential submit→result round trips on an idle node (p50, p99 ms),
         and 5 round trips each after 2 s of idleness (p50 ms)
  D      enqueue only, 100,000 no-op tasks, no worker (tasks/s; Redis bytes per task)
  E      worker start → first result, one task already queued (s)
  R      A/5 no-ops through rq's producer API, the same code on both: ``rq.Queue`` +
         ``rq worker-pool`` (SimpleWorker) and ``taskq.rq.Queue`` + a taskq node (tasks/s)
  F      A with 1 ms and 5 ms of round-trip time added between the node and Redis
         (tc netem in a network namespace; a userspace delay proxy where netem is
         unavailable, shown as F~ and marked approximate)

Every process it starts (Redis, worker nodes, RQ pools, the delay proxy, namespaces)
is stopped on exit.  The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import datetime
import inspect
import itertools
import json
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(1, ROOT)

import taskq  # noqa: E402
from taskq.tasks import noop as tq_noop  # noqa: E402
from taskq.tasks import primes as tq_primes  # noqa: E402

ALL = ["A", "A-map", "B", "C", "D", "E", "R", "F"]
SYSTEMS = ["mp", "taskq", "rq", "rq-simple"]
HEAD = {"mp": "mp Pool", "taskq": "taskq", "rq": "RQ fork", "rq-simple": "RQ Simple"}
EXPECTED_PRIMES = {3_000_000: 216_816, 300_000: 25_997}
NS_PREFIX = "tqbench"


@dataclass(frozen=True)
class Sizes:
    a_tasks: int
    map_items: int
    primes_below: int
    primes_step: int
    c_trips: int
    c_idle_trips: int
    c_idle_gap: float
    d_tasks: int
    f_rtts_ms: tuple[float, ...]


FULL = Sizes(10_000, 1_000_000, 3_000_000, 50_000, 200, 5, 2.0, 100_000, (1.0, 5.0))
QUICK = Sizes(300, 20_000, 300_000, 50_000, 30, 2, 0.3, 2_000, (1.0,))


# -- rows, targets, results ------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str
    target: str = ""
    check: Callable[[Results], bool | None] | None = None
    approx: bool = False


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, row: str, system: str, value: float) -> None:
        self.samples.setdefault((row, system), []).append(value)

    def note(self, row: str, system: str, text: str) -> None:
        self.notes[(row, system)] = text

    def median(self, row: str, system: str) -> float | None:
        values = self.samples.get((row, system))
        return statistics.median(values) if values else None

    def ratio(self, row: str, num: str = "taskq", den: str = "mp") -> float | None:
        a, b = self.median(row, num), self.median(row, den)
        return a / b if a is not None and b else None


def _ratio_at_least(row: str, limit: float) -> Callable[[Results], bool | None]:
    def check(r: Results) -> bool | None:
        x = r.ratio(row)
        return None if x is None else x >= limit
    return check


def _ratio_at_most(row: str, limit: float) -> Callable[[Results], bool | None]:
    def check(r: Results) -> bool | None:
        x = r.ratio(row)
        return None if x is None else x <= limit
    return check


def _value(row: str, cmp: Callable[[float], bool]) -> Callable[[Results], bool | None]:
    def check(r: Results) -> bool | None:
        x = r.median(row, "taskq")
        return None if x is None else cmp(x)
    return check


def _vs_loopback_a(row: str, limit: float) -> Callable[[Results], bool | None]:
    def check(r: Results) -> bool | None:
        x, base = r.median(row, "taskq"), r.median("A", "taskq")
        return None if x is None or not base else x / base >= limit
    return check


def make_rows(sizes: Sizes, f_approx: bool) -> list[Row]:
    rows = [
        Row("A", f"A  {sizes.a_tasks:,} no-ops, one submit each", "tasks/s",
            "≥ 1.0x mp", _ratio_at_least("A", 1.0)),
        Row("A-cmds", "A  Redis commands per task (server-side)", "commands", "≤ 3",
            _value("A-cmds", lambda x: x <= 3)),
        Row("A-metrics", "A  the same, node with --metrics", "tasks/s",
            "≥ 0.97x taskq A", _vs_loopback_a("A-metrics", 0.97)),
        Row("A-map", f"A-map  Pool.map(noop, range({sizes.map_items:,}))", "items/s",
            "≥ 0.5x mp", _ratio_at_least("A-map", 0.5)),
        Row("B", f"B  primes < {sizes.primes_below:,}, "
            f"{sizes.primes_below // sizes.primes_step} tasks", "wall s",
            "≤ 1.00x mp", _ratio_at_most("B", 1.00)),
        Row("B-count", "B  primes found (check)", "count",
            f"= {EXPECTED_PRIMES.get(sizes.primes_below, '?'):,}",
            _value("B-count", lambda x: x == EXPECTED_PRIMES.get(sizes.primes_below))),
        Row("C-p50", f"C  {sizes.c_trips} round trips, p50", "ms", "≤ 0.6 ms",
            _value("C-p50", lambda x: x <= 0.6)),
        Row("C-p99", f"C  {sizes.c_trips} round trips, p99", "ms", "≤ 2 ms",
            _value("C-p99", lambda x: x <= 2.0)),
        Row("C-idle", f"C  after {sizes.c_idle_gap:g} s idle, p50 of {sizes.c_idle_trips}", "ms",
            "≤ 1 ms", _value("C-idle", lambda x: x <= 1.0)),
        Row("D-rate", f"D  send_many of {sizes.d_tasks:,} no-ops, no worker", "tasks/s",
            "≥ 150,000/s", _value("D-rate", lambda x: x >= 150_000)),
        Row("D-submit", f"D  {sizes.d_tasks:,} submits with futures, to the last XADD acked",
            "tasks/s", "≥ 100,000/s", _value("D-submit", lambda x: x >= 100_000)),
        Row("D-mem", "D  Redis memory per queued task, signed", "bytes", "≤ 80 B",
            _value("D-mem", lambda x: x <= 80)),
        Row("D-mem-u", "D  the same, unsigned (no secret)", "bytes", "≤ 80 B",
            _value("D-mem-u", lambda x: x <= 80)),
        Row("E", "E  worker start → first result", "s", "≤ 0.2 s",
            _value("E", lambda x: x <= 0.2)),
        Row("R", f"R  {sizes.a_tasks // 5:,} no-ops via rq's API (enqueue, latest_result)",
            "tasks/s"),
    ]
    if f_approx:
        rows.append(Row("F", "F  A at +1 ms RTT (tc netem)", "tasks/s", "≥ 0.5x taskq A"))
        prefix, approx = "F~ ", True
    else:
        prefix, approx = "F  ", False
    rows.append(Row("F-0", f"{prefix}A through the delay path, +0 ms", "tasks/s", "(control)",
                    approx=approx))
    for rtt in sizes.f_rtts_ms:
        key = f"F-{rtt:g}"
        check = _vs_loopback_a(key, 0.5) if rtt == 1.0 else None
        rows.append(Row(key, f"{prefix}A at +{rtt:g} ms RTT", "tasks/s",
                        "≥ 0.5x taskq A" if rtt == 1.0 else "", check, approx))
    return rows


# -- formatting ------------------------------------------------------------------------


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return ""
    if unit in ("tasks/s", "items/s", "bytes", "count"):
        return f"{x:,.0f}"
    if unit == "ms":
        return f"{x:.3f}"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def render(rows: list[Row], res: Results, selected: list[str], systems: list[str]) -> str:
    head = ["workload", "unit", *[HEAD[s] for s in systems], "taskq÷mp", "target", "result"]
    lines: list[list[str]] = []
    for row in rows:
        base = row.key.split("-")[0] if row.key not in ("A-map",) else "A-map"
        if base not in selected:
            continue
        cells = [row.label, row.unit]
        for s in systems:
            note = res.notes.get((row.key, s))
            med = res.median(row.key, s)
            cells.append(fmt(med, row.unit) if med is not None else (note or "—"))
        ratio = res.ratio(row.key) if "mp" in systems and row.unit != "count" else None
        cells.append(f"{ratio:.2f}x" if ratio is not None else "")
        cells.append(row.target)
        verdict = row.check(res) if row.check else None
        if row.check is None:
            mark = ""
        elif verdict is None:
            mark = "n/a"
        else:
            mark = ("PASS" if verdict else "MISS") + ("*" if row.approx else "")
        cells.append(mark)
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = []
    numeric = set(range(2, len(head) - 2))

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out.append(line(head))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(c) for c in lines)
    return "\n".join(out)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


Measure = Callable[[], dict[str, float]]
"""One repeat of a workload on one system: {row key: value}."""
Session = Callable[[], contextlib.AbstractContextManager[Measure]]
"""Sets a system up for a workload (pool, node, RQ workers) and yields its Measure."""


def taskq_a_once(c: taskq.Client, n: int, alive: Callable[[], None]) -> float:
    """Workload A once: n submits, every result held; tasks/s."""
    t0 = time.perf_counter()
    futures = [c.submit("noop") for _ in range(n)]
    for f in futures:
        f.result(timeout=300)
    rate = n / (time.perf_counter() - t0)
    alive()
    return rate


# -- processes -------------------------------------------------------------------------


_GUARD = r'''
import os, signal, sys
groups = set()
for line in sys.stdin:
    pgid = int(line)
    if pgid > 0:
        groups.add(pgid)
    else:
        groups.discard(-pgid)
for pgid in groups:  # the benchmark died without stopping these (e.g. SIGKILLed)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
'''


def die_with_parent() -> None:
    """Pool initializer: a multiprocessing.Pool worker must not outlive a killed benchmark,
    and must not inherit the benchmark's SIGTERM handler: Pool.terminate() SIGTERMs its
    workers, and one that raised SystemExit while holding the pool's queue lock left its
    sibling blocked on it, so terminate() waited for ever (seen as an occasional hang of
    `bench.py --quick` after workload B)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class Procs:
    """Every process the benchmark starts, each in its own session (stopped by pgid).

    A guard process holds a pipe from this one: if the benchmark dies without cleaning
    up (SIGKILL, e.g. from a test timeout), the pipe closes and the guard kills every
    process group still registered with it.
    """

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.live: list[subprocess.Popen[bytes]] = []
        self._n = 0
        self._guard = subprocess.Popen([sys.executable, "-c", _GUARD], stdin=subprocess.PIPE,
                                       start_new_session=True)

    def guard(self, pgid: int, on: bool = True) -> None:
        """Register (or unregister) a process group the guard kills if we die."""
        stdin = self._guard.stdin
        if stdin is None or stdin.closed:
            return
        with contextlib.suppress(OSError):
            stdin.write(b"%d\n" % (pgid if on else -pgid))
            stdin.flush()

    def close(self) -> None:
        if self._guard.stdin is not None:
            with contextlib.suppress(OSError):
                self._guard.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._guard.wait(timeout=5)

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None,
              stdout: Any = None) -> subprocess.Popen[bytes]:
        self._n += 1
        path = os.path.join(self.logdir, f"{self._n:02d}-{name}.log")
        with open(path, "ab") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else logf, stderr=logf,
                                    start_new_session=True, env=env, cwd=ROOT)
        proc.logpath = path  # type: ignore[attr-defined]
        self.live.append(proc)
        self.guard(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # whatever is left of its group (pool children, RQ work horses)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.guard(proc.pid, on=False)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc, timeout=5.0)


def log_tail(proc: subprocess.Popen[bytes], n: int = 15) -> str:
    try:
        with open(proc.logpath) as f:  # type: ignore[attr-defined]
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def check_alive(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{log_tail(proc)}")


class Bench:
    def __init__(self, opts: argparse.Namespace, url: str, sizes: Sizes, procs: Procs) -> None:
        self.opts, self.url, self.sizes, self.procs = opts, url, sizes, procs
        self.nprocs: int = opts.procs
        self.repeat: int = opts.repeat
        self.res = Results()
        self.redis = redis.Redis.from_url(url)
        self.run_id = os.urandom(3).hex()
        self._queues = 0
        self.systems = ["mp", "taskq"] + ([] if opts.skip_rq else ["rq", "rq-simple"])
        self.rq_reason: str | None = None
        self.f_effective: dict[float, float] = {}  # nominal → measured added RTT (proxy)
        if not opts.skip_rq:
            try:
                import rq  # noqa: F401
            except ImportError:
                self.rq_reason = "n/a (rq not installed: pip install 'taskq[bench]')"

    def queue_name(self, tag: str) -> str:
        self._queues += 1
        return f"bench-{self.run_id}-{tag}-{self._queues}"

    # -- taskq nodes

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TASKQ_RESULT_TTL"] = "600"  # results of a benchmark need not live a day
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        return env

    def worker_cmd(self, url: str, queue: str, metrics_on: bool = False) -> list[str]:
        on = metrics_on or self.opts.metrics
        metrics = ["--metrics", "127.0.0.1:0"] if on else []  # any free port
        return [sys.executable, "-m", "taskq", "--url", url, "worker", "--procs", str(self.nprocs),
                "--queue", queue, "--log-level", "warning", *metrics]

    def start_worker(self, queue: str, url: str | None = None,
                     prefix: list[str] | None = None,
                     metrics: bool = False) -> subprocess.Popen[bytes]:
        cmd = self.worker_cmd(url or self.url, queue, metrics)
        proc = self.procs.start([*(prefix or []), *cmd], "taskq-worker", env=self.worker_env())
        self.wait_node(proc)
        return proc

    def wait_node(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """Until the node has heartbeated (its id names its pid)."""
        end = time.monotonic() + timeout
        marker = f":{proc.pid}:".encode()
        while time.monotonic() < end:
            check_alive(proc, "taskq worker")
            if any(marker in m for m in self.redis.zrange("taskq:nodes", 0, -1)):
                return
            time.sleep(0.02)
        raise RuntimeError(f"taskq worker did not come up:\n{log_tail(proc)}")

    def client(self, queue: str, url: str | None = None) -> taskq.Client:
        c = taskq.Client(url or self.url, queue=queue, result_ttl=600)
        for _ in range(20):  # warm: listener thread, group, the node's pool and chunk sizing
            c.submit("noop").result(timeout=60)
        return c

    def forget_queue(self, queue: str) -> None:
        """Delete a queue's keys (results expire on their own)."""
        keys = [f"taskq:{{{queue}}}:{k}" for k in ("stream", "stats", "delayed", "dead")]
        self.redis.delete(*keys)
        self.redis.srem("taskq:queues", queue)

    # -- RQ pools

    def start_rq(self, system: str, queue: str, wait: bool = True) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "rq.cli", "worker-pool", "-n", str(self.nprocs), "-u",
                self.url, "-P", HERE, "-l", "WARNING"]
        if system == "rq-simple":
            args += ["-w", "rq.worker.SimpleWorker"]
        args.append(queue)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
        proc = self.procs.start(args, system, env=env)
        if wait:
            self.wait_rq(proc, queue)
        return proc

    def wait_rq(self, proc: subprocess.Popen[bytes], queue: str, timeout: float = 60.0) -> None:
        from rq import Queue, Worker

        q = Queue(queue, connection=self.redis)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            check_alive(proc, "rq worker-pool")
            if Worker.count(queue=q) >= self.nprocs:
                return
            time.sleep(0.05)
        raise RuntimeError(f"rq worker-pool did not come up:\n{log_tail(proc)}")

    def rq_queue(self, queue: str) -> Any:
        from rq import Queue

        return Queue(queue, connection=self.redis)

    def rq_wait(self, job: Any, timeout: int = 300) -> Any:
        from rq.results import Result

        result = job.latest_result(timeout=timeout)  # XREAD BLOCK on the job's result stream
        if result is None:
            raise RuntimeError(f"RQ job {job.id} gave no result within {timeout} s")
        if result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"RQ job {job.id} failed: {result.exc_string}")
        return result.return_value

    # -- driving one workload over every system

    def run_workload(self, workload: str, sessions: dict[str, Session | str]) -> None:
        """Set every system up, then measure them in turn, repeat after repeat (the order
        rotating), so background load and drift hit all of them alike."""
        keys = self.row_keys(workload)
        with contextlib.ExitStack() as stack:
            measures: dict[str, Measure] = {}
            for system in self.systems:
                session = sessions.get(system)
                if system.startswith("rq") and self.rq_reason:
                    session = self.rq_reason
                if session is None:
                    continue
                if isinstance(session, str):
                    for key in keys:
                        self.res.note(key, system, session)
                    continue
                log(f"{workload}: setting up {HEAD[system]}")
                try:
                    measures[system] = stack.enter_context(session())
                except Exception as exc:
                    self._failed(workload, system, exc)
            for rep in range(self.repeat):
                order = list(measures)
                order = order[rep % len(order):] + order[:rep % len(order)] if order else order
                for system in order:
                    log(f"{workload}: {HEAD[system]}, repeat {rep + 1}/{self.repeat} "
                        f"(load avg {os.getloadavg()[0]:.2f})")
                    try:
                        for key, value in measures[system]().items():
                            self.res.add(key, system, value)
                    except Exception as exc:  # one broken system must not lose the others
                        self._failed(workload, system, exc)
                        del measures[system]

    def _failed(self, workload: str, system: str, exc: Exception) -> None:
        log(f"{workload}: {HEAD[system]} failed: {type(exc).__name__}: {exc}")
        for key in self.row_keys(workload):
            if (key, system) not in self.res.samples:
                self.res.note(key, system, f"error: {type(exc).__name__}")

    @staticmethod
    def row_keys(workload: str) -> list[str]:
        return {"A": ["A", "A-cmds", "A-metrics"], "A-map": ["A-map"], "B": ["B", "B-count"],
                "C": ["C-p50", "C-p99", "C-idle"],
                "D": ["D-rate", "D-submit", "D-mem", "D-mem-u"], "E": ["E"], "R": ["R"]}[workload]

    @contextlib.contextmanager
    def mp_pool(self) -> Iterator[Any]:
        with multiprocessing.Pool(self.nprocs, initializer=die_with_parent) as pool:
            pool.map(tq_noop, range(100), chunksize=1)  # children up and warm
            yield pool

    @contextlib.contextmanager
    def taskq_node(self, tag: str, worker_url: str | None = None,
                   prefix: list[str] | None = None,
                   client_url: str | None = None,
                   metrics: bool = False) -> Iterator[tuple[taskq.Client, Callable[[], None]]]:
        """A worker node on a fresh queue and a warm client; yields (client, alive-check)."""
        queue = self.queue_name(tag)
        proc = self.start_worker(queue, url=worker_url, prefix=prefix, metrics=metrics)
        try:
            with self.client(queue, client_url) as c:
                yield c, lambda: check_alive(proc, "taskq worker")
        finally:
            self.procs.stop(proc)
            self.forget_queue(queue)

    @contextlib.contextmanager
    def rq_pool(self, system: str, tag: str) -> Iterator[Any]:
        """An ``rq worker-pool`` on a fresh queue, warm; yields the Queue."""
        import bench_rq_tasks

        queue = self.queue_name(f"{tag}-{system}")
        proc = self.start_rq(system, queue)
        try:
            q = self.rq_queue(queue)
            for _ in range(2 * self.nprocs):
                self.rq_wait(q.enqueue(bench_rq_tasks.noop), 60)
            yield q
        finally:
            self.procs.stop(proc)

    # -- A: one submit per task --------------------------------------------------------

    def bench_a(self) -> None:
        n = self.sizes.a_tasks

        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            with self.mp_pool() as pool:
                def once() -> dict[str, float]:
                    t0 = time.perf_counter()
                    handles = [pool.apply_async(tq_noop) for _ in range(n)]
                    for h in handles:
                        h.get(timeout=300)
                    return {"A": n / (time.perf_counter() - t0)}
                yield once

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            # The same A through a node with --metrics, in the same repeats (which of the
            # two goes first alternates): the cost of metrics on the hot path, same run.
            with self.taskq_node("a") as (c, alive), \
                    self.taskq_node("am", metrics=True) as (cm, alive_m):
                turn = itertools.count()

                def once() -> dict[str, float]:
                    pair = [("A", c, alive), ("A-metrics", cm, alive_m)]
                    if next(turn) % 2:
                        pair.reverse()
                    out = {}
                    for key, cl, ok in pair:
                        before = self.command_calls()
                        out[key] = taskq_a_once(cl, n, ok)
                        if key == "A":  # server-side, scripts' inner calls included
                            out["A-cmds"] = (self.command_calls() - before) / n
                    return out
                yield once

        def rq_(system: str) -> Session:
            @contextlib.contextmanager
            def session() -> Iterator[Measure]:
                import bench_rq_tasks

                with self.rq_pool(system, "a") as q:
                    def once() -> dict[str, float]:
                        t0 = time.perf_counter()
                        jobs = [q.enqueue(bench_rq_tasks.noop) for _ in range(n)]
                        for job in jobs:
                            self.rq_wait(job)
                        return {"A": n / (time.perf_counter() - t0)}
                    yield once
            return session

        self.run_workload("A", {"mp": mp, "taskq": tq, "rq": rq_("rq"),
                                "rq-simple": rq_("rq-simple")})

    # -- A-map: Pool.map -----------------------------------------------------------------

    def bench_a_map(self) -> None:
        n = self.sizes.map_items

        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            with self.mp_pool() as pool:
                def once() -> dict[str, float]:
                    t0 = time.perf_counter()
                    out = pool.map(tq_noop, range(n))
                    dt = time.perf_counter() - t0
                    assert len(out) == n
                    return {"A-map": n / dt}
                yield once

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            pool_cls = taskq.Pool
            kwargs: dict[str, Any] = {"processes": self.nprocs, "url": self.url}
            queue = self.queue_name("map")
            if "queue" in inspect.signature(pool_cls).parameters:
                kwargs["queue"] = queue
            else:
                queue = "default"
            proc = self.start_worker(queue)
            try:
                def once() -> dict[str, float]:
                    pool = pool_cls(**kwargs)
                    try:
                        pool.map(tq_noop, range(100))  # warm
                        t0 = time.perf_counter()
                        out = pool.map(tq_noop, range(n))
                        dt = time.perf_counter() - t0
                    finally:
                        with contextlib.suppress(Exception):
                            pool.close()
                            pool.join()
                    assert len(out) == n, f"taskq.Pool.map returned {len(out)} items"
                    check_alive(proc, "taskq worker")
                    return {"A-map": n / dt}
                yield once
            finally:
                self.procs.stop(proc)
                if queue != "default":
                    self.forget_queue(queue)

        self.run_workload("A-map", {
            "mp": mp, "rq": "—", "rq-simple": "—",
            "taskq": tq if hasattr(taskq, "Pool") else "n/a (taskq.Pool not available)",
        })

    # -- B: primes -----------------------------------------------------------------------

    def primes_ranges(self) -> tuple[list[int], list[int]]:
        s = self.sizes
        starts = list(range(0, s.primes_below, s.primes_step))
        return starts, [min(a + s.primes_step, s.primes_below) for a in starts]

    def bench_b(self) -> None:
        starts, ends = self.primes_ranges()

        def timed(run: Callable[[], int]) -> dict[str, float]:
            t0 = time.perf_counter()
            total = run()
            return {"B": time.perf_counter() - t0, "B-count": total}

        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            with self.mp_pool() as pool:
                # chunksize=1: the default (8 here) would leave one process idle at the end
                yield lambda: timed(lambda: sum(pool.starmap(tq_primes, zip(starts, ends, strict=True),
                                                             chunksize=1)))

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            with self.taskq_node("b") as (c, alive):
                def once() -> dict[str, float]:
                    out = timed(lambda: sum(c.map("primes", starts, ends, timeout=600)))
                    alive()
                    return out
                yield once

        def rq_(system: str) -> Session:
            @contextlib.contextmanager
            def session() -> Iterator[Measure]:
                import bench_rq_tasks

                with self.rq_pool(system, "b") as q:
                    def run() -> int:
                        jobs = [q.enqueue(bench_rq_tasks.primes, a, b, job_timeout=600)
                                for a, b in zip(starts, ends, strict=True)]
                        return sum(self.rq_wait(j) for j in jobs)
                    yield lambda: timed(run)
            return session

        self.run_workload("B", {"mp": mp, "taskq": tq, "rq": rq_("rq"),
                                "rq-simple": rq_("rq-simple")})

    # -- C: round-trip latency -----------------------------------------------------------

    def latency(self, trip: Callable[[], object]) -> dict[str, float]:
        s = self.sizes
        lat = []
        for _ in range(s.c_trips):
            t0 = time.perf_counter()
            trip()
            lat.append((time.perf_counter() - t0) * 1000)
        idle = []
        for _ in range(s.c_idle_trips):
            time.sleep(s.c_idle_gap)
            t0 = time.perf_counter()
            trip()
            idle.append((time.perf_counter() - t0) * 1000)
        return {"C-p50": statistics.median(lat), "C-p99": percentile(lat, 99),
                "C-idle": statistics.median(idle)}

    def bench_c(self) -> None:
        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            with self.mp_pool() as pool:
                yield lambda: self.latency(lambda: pool.apply(tq_noop))

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            with self.taskq_node("c") as (c, _):
                yield lambda: self.latency(lambda: c.submit("noop").result(timeout=60))

        def rq_(system: str) -> Session:
            @contextlib.contextmanager
            def session() -> Iterator[Measure]:
                import bench_rq_tasks

                with self.rq_pool(system, "c") as q:
                    yield lambda: self.latency(
                        lambda: self.rq_wait(q.enqueue(bench_rq_tasks.noop), 60))
            return session

        self.run_workload("C", {"mp": mp, "taskq": tq, "rq": rq_("rq"),
                                "rq-simple": rq_("rq-simple")})

    # -- D: enqueue only -----------------------------------------------------------------

    def command_calls(self) -> int:
        """Commands Redis has run so far (``INFO commandstats``; a script's inner calls
        count one each), less the INFO calls that read it."""
        stats = self.redis.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    def used_memory(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def bench_d(self) -> None:
        n = self.sizes.d_tasks

        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            with self.mp_pool() as pool:
                def once() -> dict[str, float]:
                    t0 = time.perf_counter()
                    results = [pool.apply_async(tq_noop) for _ in range(n)]
                    dt = time.perf_counter() - t0  # the calls returning: what mp.Pool offers
                    results[-1].wait(60)
                    return {"D-submit": n / dt}
                yield once

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            def once() -> dict[str, float]:
                out = self._d_send_many(n, secret=None)  # signed: TASKQ_SECRET of the run
                out["D-mem-u"] = self._d_send_many(n, secret=b"")["D-mem"]
                out["D-submit"] = self._d_submits(n)
                return out
            yield once

        @contextlib.contextmanager
        def rq_() -> Iterator[Measure]:
            import bench_rq_tasks
            from rq import Queue

            def once() -> dict[str, float]:
                q = self.rq_queue(self.queue_name("d-rq"))
                q.enqueue(bench_rq_tasks.noop)  # the queue exists, as for taskq's group
                q.empty()
                before = self.used_memory()
                t0 = time.perf_counter()
                q.enqueue_many([Queue.prepare_data(bench_rq_tasks.noop) for _ in range(n)])
                dt = time.perf_counter() - t0
                after = self.used_memory()
                assert q.count == n
                q.empty()
                return {"D-rate": n / dt, "D-mem": (after - before) / n}
            yield once

        # RQ's enqueue does not depend on the worker class: measured once, as "RQ fork".
        self.run_workload("D", {"mp": mp, "taskq": tq, "rq": rq_,
                                "rq-simple": "(same as fork)"})

    def _d_send_many(self, n: int, secret: bytes | None) -> dict[str, float]:
        """``send_many`` of ``n`` no-ops on a fresh queue: its rate and the Redis bytes per
        queued task. ``secret=b""`` sends unsigned (no secret), None uses the run's."""
        queue = self.queue_name("d")
        settings = None
        if secret is not None:
            settings = taskq.Settings.from_env(url=self.url, queues=(queue,), result_ttl=600)
            settings = dataclasses.replace(settings, secret=secret or None)
        c = taskq.Client(self.url, queue=queue, result_ttl=600, settings=settings)
        try:
            c.send("noop")  # connection, stream and group exist: not on the clock
            c.flush()
            arglists: list[list[Any]] = [[] for _ in range(n)]
            before = self.used_memory()
            t0 = time.perf_counter()
            batch = c.send_many("noop", arglists)
            dt = time.perf_counter() - t0
            after = self.used_memory()
            assert self.redis.xlen(c.broker.keys.stream) == n + 1
            self.redis.delete(c.broker.keys.batch(batch.id))
            return {"D-rate": n / dt, "D-mem": (after - before) / n}
        finally:
            c.close()
            self.forget_queue(queue)

    def _d_submits(self, n: int) -> float:
        """``n`` one-by-one submits with futures (no worker), timed until Redis has
        acknowledged the last XADD (``flush``), not until the last call returned."""
        queue = self.queue_name("d-submit")
        c = taskq.Client(self.url, queue=queue, result_ttl=600)
        try:
            c.submit("noop")  # connection, stream and group exist: not on the clock
            c.flush()
            t0 = time.perf_counter()
            futures = [c.submit("noop") for _ in range(n)]
            assert c.flush(120)
            dt = time.perf_counter() - t0
            assert self.redis.xlen(c.broker.keys.stream) == n + 1 and len(futures) == n
            return n / dt
        finally:
            c.close()
            self.forget_queue(queue)

    # -- E: cold start -------------------------------------------------------------------

    def bench_e(self) -> None:
        @contextlib.contextmanager
        def mp() -> Iterator[Measure]:
            def once() -> dict[str, float]:
                t0 = time.perf_counter()
                with multiprocessing.Pool(self.nprocs, initializer=die_with_parent) as pool:
                    pool.apply(tq_noop)
                    return {"E": time.perf_counter() - t0}
            yield once

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            def once() -> dict[str, float]:
                queue = self.queue_name("e")
                with taskq.Client(self.url, queue=queue, result_ttl=600) as c:
                    fut = c.submit("noop")
                    with contextlib.suppress(AttributeError):
                        c.flush()  # queued before the clock starts
                    t0 = time.perf_counter()
                    proc = self.procs.start(self.worker_cmd(self.url, queue), "taskq-worker-e",
                                            env=self.worker_env())
                    try:
                        fut.result(timeout=60)
                        return {"E": time.perf_counter() - t0}
                    finally:
                        self.procs.stop(proc)
                        self.forget_queue(queue)
            yield once

        def rq_(system: str) -> Session:
            @contextlib.contextmanager
            def session() -> Iterator[Measure]:
                import bench_rq_tasks

                def once() -> dict[str, float]:
                    queue = self.queue_name("e-" + system)
                    job = self.rq_queue(queue).enqueue(bench_rq_tasks.noop)
                    t0 = time.perf_counter()
                    proc = self.start_rq(system, queue, wait=False)
                    try:
                        self.rq_wait(job, 60)
                        return {"E": time.perf_counter() - t0}
                    finally:
                        self.procs.stop(proc)
                yield once
            return session

        self.run_workload("E", {"mp": mp, "taskq": tq, "rq": rq_("rq"),
                                "rq-simple": rq_("rq-simple")})

    # -- R: rq's producer API, the same code on rq and on taskq.rq ----------------------

    def bench_r(self) -> None:
        n = self.sizes.a_tasks // 5

        def rq_api_once(q: Any, fn: Callable[..., Any]) -> dict[str, float]:
            """The producer code: identical for rq.Queue and taskq.rq.Queue."""
            t0 = time.perf_counter()
            jobs = [q.enqueue(fn) for _ in range(n)]
            for job in jobs:
                result = job.latest_result(timeout=300)
                if result is None or result.type.name != "SUCCESSFUL":
                    raise RuntimeError(f"job {job.id}: {result and result.exc_string}")
            return {"R": n / (time.perf_counter() - t0)}

        @contextlib.contextmanager
        def tq() -> Iterator[Measure]:
            import taskq.rq

            queue = self.queue_name("r")
            proc = self.start_worker(queue)
            try:
                q = taskq.rq.Queue(queue, connection=self.redis)
                rq_api_once(q, tq_noop)  # warm, as rq_pool warms RQ
                yield lambda: rq_api_once(q, tq_noop)
                check_alive(proc, "taskq worker")
            finally:
                self.procs.stop(proc)
                self.forget_queue(queue)

        @contextlib.contextmanager
        def rq_simple() -> Iterator[Measure]:
            import bench_rq_tasks

            with self.rq_pool("rq-simple", "r") as q:
                yield lambda: rq_api_once(q, bench_rq_tasks.noop)

        self.run_workload("R", {"mp": "—", "taskq": tq, "rq": "—", "rq-simple": rq_simple})

    def taskq_a_rates(self, n: int, repeat: int, worker_url: str | None = None,
                      prefix: list[str] | None = None, client_url: str | None = None) -> list[float]:
        """Workload A on taskq with the node reaching Redis another way (workload F)."""
        with self.taskq_node("f", worker_url, prefix, client_url) as (c, alive):
            return [taskq_a_once(c, n, alive) for _ in range(repeat)]

    # -- F: added round-trip time between node and Redis ---------------------------------

    def bench_f(self, netem_problem: str | None) -> None:
        n = self.sizes.a_tasks
        if netem_problem is None:
            self.f_netem(n)
            return
        self.res.note("F", "taskq", "n/a (no netem: see F above)")
        if self.opts.no_f_proxy:
            return
        if not self.url.startswith("redis://"):
            for rtt in (0.0, *self.sizes.f_rtts_ms):
                self.res.note(f"F-{rtt:g}", "taskq", "n/a (delay proxy needs a TCP Redis URL)")
            return
        conn = self.redis.connection_pool.connection_kwargs
        target = f"{conn.get('host', '127.0.0.1')}:{conn.get('port', 6379)}"
        db = conn.get("db", 0)
        for rtt in (0.0, *self.sizes.f_rtts_ms):
            log(f"F~: taskq through a userspace delay proxy, +{rtt:g} ms RTT")
            proxy = self.procs.start(
                [sys.executable, os.path.join(HERE, "bench_delayproxy.py"), "--target", target,
                 "--delay-ms", str(rtt / 2)], "delayproxy", stdout=subprocess.PIPE)
            try:
                assert proxy.stdout is not None
                port = int(proxy.stdout.readline())
                proxied = f"redis://127.0.0.1:{port}/{db}"
                self.f_effective[rtt] = ping_ms(proxied) - ping_ms(self.url)
                for rate in self.taskq_a_rates(n, self.repeat, worker_url=proxied):
                    self.res.add(f"F-{rtt:g}", "taskq", rate)
            except Exception as exc:
                log(f"F~ +{rtt:g} ms failed: {type(exc).__name__}: {exc}")
                self.res.note(f"F-{rtt:g}", "taskq", f"error: {type(exc).__name__}")
            finally:
                self.procs.stop(proxy)

    def f_netem(self, n: int) -> None:
        """The node in its own network namespace behind a veth pair with netem on both
        ends; Redis (a private server, bound to loopback and the veth address) outside."""
        with netns() as ns, private_redis(self.procs, ("127.0.0.1", ns.host_addr)) as port:
            worker_url = f"redis://{ns.host_addr}:{port}/0"
            client_url = f"redis://127.0.0.1:{port}/0"
            saved = self.redis
            self.redis = redis.Redis.from_url(client_url)  # wait_node reads the nodes key here
            try:
                for rtt in (0.0, *self.sizes.f_rtts_ms):
                    log(f"F: taskq node in netns {ns.name}, +{rtt:g} ms RTT (netem)")
                    ns.set_delay(rtt / 2)
                    try:
                        rates = self.taskq_a_rates(n, self.repeat, worker_url=worker_url,
                                                   prefix=["ip", "netns", "exec", ns.name],
                                                   client_url=client_url)
                        for rate in rates:
                            self.res.add(f"F-{rtt:g}", "taskq", rate)
                    except Exception as exc:
                        log(f"F +{rtt:g} ms failed: {type(exc).__name__}: {exc}")
                        self.res.note(f"F-{rtt:g}", "taskq", f"error: {type(exc).__name__}")
            finally:
                self.redis.close()
                self.redis = saved


# -- network namespace with netem (workload F) -----------------------------------------


@dataclass
class Netns:
    name: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str

    def set_delay(self, one_way_ms: float) -> None:
        for prefix, dev in ((["tc"], self.host_if), (["ip", "netns", "exec", self.name, "tc"],
                                                     self.ns_if)):
            subprocess.run([*prefix, "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, check=False)
            if one_way_ms > 0:
                _run([*prefix, "qdisc", "add", "dev", dev, "root", "netem", "delay",
                      f"{one_way_ms:g}ms"])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()}")


def _free_subnet() -> tuple[str, str]:
    """A /30 in 10.213.0.0/16 that no interface of this host uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          check=False).stdout
    for third in range(0, 256):
        for fourth in range(0, 256, 4):
            host, ns = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
            if f" 10.213.{third}.{fourth}" not in used and host not in used and ns not in used:
                return host, ns
    raise RuntimeError("no free /30 in 10.213.0.0/16")


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    tag = f"{os.getpid() % 100000}"
    host_addr, ns_addr = _free_subnet()
    ns = Netns(f"{NS_PREFIX}{tag}", f"tqb{tag}h", f"tqb{tag}n", host_addr, ns_addr)
    try:
        _run(["ip", "netns", "add", ns.name])
        _run(["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if])
        _run(["ip", "link", "set", ns.ns_if, "netns", ns.name])
        _run(["ip", "addr", "add", f"{host_addr}/30", "dev", ns.host_if])
        _run(["ip", "link", "set", ns.host_if, "up"])
        _run(["ip", "-n", ns.name, "addr", "add", f"{ns_addr}/30", "dev", ns.ns_if])
        _run(["ip", "-n", ns.name, "link", "set", ns.ns_if, "up"])
        _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def netem_problem() -> str | None:
    """None if a namespace + veth + netem can be set up here, else why not."""
    if not sys.platform.startswith("linux"):
        return "tc netem needs Linux"
    if os.geteuid() != 0:
        return "tc netem and network namespaces need root"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not found (apt-get install iproute2)"
    try:
        with netns() as ns:
            ns.set_delay(0.5)
            ns.set_delay(0)
    except RuntimeError as exc:
        text = str(exc)
        if "qdisc kind is unknown" in text:
            return "this kernel has no sch_netem (tc: 'Specified qdisc kind is unknown')"
        return f"cannot set up a netem namespace: {text.splitlines()[-1][:120]}"
    return None


@contextlib.contextmanager
def private_redis(procs: Procs, binds: tuple[str, ...]) -> Iterator[int]:
    from taskq.local.embedded import find_redis_server

    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="taskq-bench-redis-")
    proc = procs.start([find_redis_server(), "--port", str(port), "--bind", *binds,
                        "--save", "", "--appendonly", "no", "--dir", workdir,
                        "--maxmemory-policy", "noeviction"], "redis-f")
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        end = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                check_alive(proc, "redis-server")
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        client.close()
        yield port
    finally:
        procs.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def ping_ms(url: str, n: int = 200) -> float:
    """Median PING round trip over ``url`` (ms)."""
    with contextlib.closing(redis.Redis.from_url(url)) as r:
        r.ping()
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            r.ping()
            lat.append((time.perf_counter() - t0) * 1000)
    return statistics.median(lat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- main --------------------------------------------------------------------------------


def conditions(bench: Bench, server: str, f_note: str) -> str:
    info = bench.redis.info("server")
    try:
        import rq

        rq_version = rq.__version__
    except ImportError:
        rq_version = "not installed"
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return "\n".join([
        f"taskq benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}",
        f"redis: {server} (redis-server {info.get('redis_version')}), redis-py "
        f"{redis.__version__}; taskq {taskq.__version__} from {os.path.dirname(taskq.__file__)}; "
        f"rq {rq_version}",
        f"{bench.nprocs} processes per system; medians of {bench.repeat} repeat(s); "
        f"taskq÷mp = taskq median / mp Pool median of this run",
        "bytecode: taskq's compiled before the run (as pip install does)",
        f"F: {f_note}",
    ])


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat; -1 if unknown)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return -1.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


@contextlib.contextmanager
def run_environment(url: str | None, prefix: str) -> Iterator[tuple[Procs, str, str]]:
    """What one benchmark run stands on, set up and torn down in one place: a shared
    secret (as a real deployment has; the nodes started here inherit it), a log dir, the
    process guard, and Redis: ``url``, else an embedded redis-server on a free port.
    Yields (procs, url, where); everything is stopped and removed at the end, on SIGTERM too."""
    os.environ.setdefault("TASKQ_SECRET", secrets.token_hex(16))
    # Every worker started here imports taskq from its bytecode, as after `pip install`
    # (which compiles it): an editable checkout under PYTHONDONTWRITEBYTECODE would
    # otherwise recompile ~300 KB of source at every start, a cost no deployment pays.
    compileall.compile_dir(os.path.dirname(taskq.__file__), quiet=1)
    logdir = tempfile.mkdtemp(prefix=prefix)
    procs = Procs(logdir)
    server = None
    old_term = signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        if url:
            where = url
        else:
            from taskq.local.embedded import EmbeddedRedis

            server = EmbeddedRedis(port=0).start()
            if server.pid is not None:
                procs.guard(server.pid)  # its own session: pgid = pid
            url, where = server.url, f"embedded, {server.url}"
        log(f"Redis at {url}; logs in {logdir}")
        yield procs, url, where
    finally:
        signal.signal(signal.SIGTERM, old_term)
        procs.stop_all()
        if server is not None:
            pid = server.pid
            server.stop()
            if pid is not None:
                procs.guard(pid, on=False)
        procs.close()
        shutil.rmtree(logdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="taskq vs multiprocessing.Pool vs RQ.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--url", help="use this Redis instead of starting an embedded one")
    p.add_argument("--repeat", type=int, default=None, help="repeats per figure (default 3)")
    p.add_argument("--only", default=",".join(ALL),
                   help=f"comma-separated workloads (default {','.join(ALL)})")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, 1 repeat, no RQ, no F (a smoke run for CI)")
    p.add_argument("--procs", type=int, default=2, help="processes per system (default 2)")
    p.add_argument("--skip-rq", action="store_true", help="leave RQ out")
    p.add_argument("--rq", action="store_true", help="include RQ even with --quick")
    p.add_argument("--no-f-proxy", action="store_true",
                   help="without netem, print F as n/a instead of using the delay proxy")
    p.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    p.add_argument("--metrics", action="store_true",
                   help="start taskq workers with --metrics (to measure its cost on the hot path)")
    opts = p.parse_args(argv)
    selected = [w.strip() for w in opts.only.split(",") if w.strip()]
    bad = [w for w in selected if w not in ALL]
    if bad:
        p.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(ALL)}")
    if opts.quick and not opts.rq:
        opts.skip_rq = True
        if "--only" not in " ".join(argv if argv is not None else sys.argv):
            selected = [w for w in selected if w != "F"]
    opts.selected = selected
    if opts.repeat is None:
        opts.repeat = 1 if opts.quick else 3
    if opts.repeat < 1:
        p.error("--repeat must be at least 1")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    sys.path.insert(0, HERE)  # bench_rq_tasks, for pickling RQ job references
    with run_environment(opts.url, "taskq-bench-") as (procs, url, where):
        busy_before = cpu_busy()
        load_before = os.getloadavg()[0]
        f_problem = netem_problem() if "F" in opts.selected else None
        if "F" not in opts.selected:
            f_note = "not run"
        elif f_problem is None:
            f_note = "tc netem on a veth pair, the node in its own network namespace"
        elif opts.no_f_proxy:
            f_note = f"n/a: {f_problem}"
        else:
            f_note = (f"netem unavailable ({f_problem}); F~ rows use a userspace delay proxy "
                      "between node and Redis (approximate, marked *)")
        bench = Bench(opts, url, sizes, procs)
        steps: dict[str, Callable[[], None]] = {
            "A": bench.bench_a, "A-map": bench.bench_a_map, "B": bench.bench_b,
            "C": bench.bench_c, "D": bench.bench_d, "E": bench.bench_e,
            "R": bench.bench_r,
            "F": lambda: bench.bench_f(f_problem),
        }
        for workload in ALL:
            if workload in opts.selected:
                steps[workload]()
        if bench.f_effective:
            f_note += "; measured added RTT (PING p50, proxy - direct): " + ", ".join(
                f"{k:g} ms → {v:.2f} ms" for k, v in sorted(bench.f_effective.items()))
        rows = make_rows(sizes, f_approx=f_problem is not None)
        print(conditions(bench, where, f_note))
        if busy_before >= 0:
            print(f"other load: {100 * busy_before:.0f}% of all CPUs busy in the second before the "
                  f"run; 1-min load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end")
        print()
        print(render(rows, bench.res, opts.selected, bench.systems))
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump({"samples": {f"{r}|{s}": v for (r, s), v in bench.res.samples.items()},
                           "notes": {f"{r}|{s}": v for (r, s), v in bench.res.notes.items()},
                           "sizes": sizes.__dict__, "repeat": opts.repeat}, f, indent=1)
        return 0


if __name__ == "__main__":
    sys.exit(main())
