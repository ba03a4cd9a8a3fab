"""scripts/bench.py --quick runs end to end and prints its table (so CI exercises it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"


@pytest.mark.timeout(90)
def test_bench_quick_prints_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("TASKQ_URL", None)  # the script must start its own Redis
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # lets it stop its Redis and workers
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # its guard process still stops what it started
            out, err = proc.communicate()
        pytest.fail(f"bench.py --quick took over 60 s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert "workload" in out and "taskq÷mp" in out, out
    for row in ("A  ", "A-map", "B  primes found", "C  ", "D  send_many", "D  2,000 submits",
                "E  worker start"):
        assert row in out, f"row {row!r} missing:\n{out}"
    assert "error:" not in out, out
    table = out.split("----", 1)[1]
    assert "25,997" in table  # primes below 300,000, counted by both mp and taskq
