"""scripts/bench.py --quick runs end to end and prints its table (so CI exercises it)."""

from __future__ import annotations

import pytest
from script_helpers import ROOT, run_script

BENCH = ROOT / "scripts" / "bench.py"


@pytest.mark.timeout(90)
def test_bench_quick_prints_the_table() -> None:
    returncode, out, err = run_script(BENCH, "--quick", timeout=60)
    assert returncode == 0, err[-3000:]
    assert "workload" in out and "taskq÷mp" in out, out
    for row in ("A  ", "A-map", "B  primes found", "C  ", "D  send_many", "D  2,000 submits",
                "E  worker start"):
        assert row in out, f"row {row!r} missing:\n{out}"
    assert "error:" not in out, out
    table = out.split("----", 1)[1]
    assert "25,997" in table  # primes below 300,000, counted by both mp and taskq
