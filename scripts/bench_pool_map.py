"""taskq.Pool(2).map against multiprocessing.Pool(2).map, in one run, interleaved.

The tutorial's workloads: counting primes in 5 ranges of 10,000, and map(noop) over a
million items. Both pools are local (taskq starts its embedded Redis and a local node),
so this is the overhead of going through taskq, not network distance.

    python scripts/bench_pool_map.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
from typing import Any

import taskq


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % i for i in range(2, int(math.sqrt(n)) + 1))


def count_primes(args: tuple[int, int]) -> int:
    start, end = args
    return sum(1 for n in range(start, end) if is_prime(n))


def noop(x: int) -> int:
    return x


RANGES = [(i, i + 10_000) for i in range(0, 50_000, 10_000)]
N = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    times: dict[str, dict[str, list[float]]] = {
        s: {"primes": [], "noop": []} for s in ("multiprocessing", "taskq")}
    with multiprocessing.Pool(2) as mp, taskq.Pool(2) as tq:
        pools: list[tuple[str, Any]] = [("multiprocessing", mp), ("taskq", tq)]
        for _, pool in pools:  # warm up: processes, imports, chunk-size estimates
            pool.map(noop, range(1000))
            pool.map(count_primes, RANGES)
            pool.map(noop, range(N))
        for _ in range(repeat):
            for name, pool in pools:
                start = time.perf_counter()
                assert sum(pool.map(count_primes, RANGES)) == 5133
                times[name]["primes"].append(time.perf_counter() - start)
                start = time.perf_counter()
                out = pool.map(noop, range(N))
                times[name]["noop"].append(time.perf_counter() - start)
                assert len(out) == N and out[-1] == N - 1
    med = {s: {w: statistics.median(v) for w, v in d.items()} for s, d in times.items()}
    mp_p, tq_p = med["multiprocessing"]["primes"], med["taskq"]["primes"]
    mp_n, tq_n = med["multiprocessing"]["noop"], med["taskq"]["noop"]
    print(f"medians of {repeat}, 2 processes each")
    print(f"primes, 5 ranges of 10,000:  multiprocessing {mp_p * 1e3:7.1f} ms   "
          f"taskq {tq_p * 1e3:7.1f} ms   taskq takes {tq_p / mp_p:.2f}x")
    print(f"map(noop, range(1,000,000)): multiprocessing {N / mp_n:11,.0f} items/s   "
          f"taskq {N / tq_n:11,.0f} items/s   ratio {mp_n / tq_n:.2f}")


if __name__ == "__main__":
    main()
