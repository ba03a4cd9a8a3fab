"""scripts/bench_scale.py --quick runs end to end: its table, every section, and a PNG."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from script_helpers import ROOT, run_script

SCRIPT = ROOT / "scripts" / "bench_scale.py"

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.skipif(not HAS_MATPLOTLIB and not os.environ.get("CI"),
                    reason="matplotlib not installed (pip install 'taskq[bench]')")
@pytest.mark.timeout(120)
def test_bench_scale_quick_prints_the_table_and_writes_the_plot(tmp_path: Path) -> None:
    # CI installs only the test extra: there the table is still checked, without the plot
    png = tmp_path / "scale.png"
    plot = ["--plot", str(png)] if HAS_MATPLOTLIB else ["--no-plot"]
    returncode, out, err = run_script(SCRIPT, "--quick", *plot, timeout=90)
    assert returncode == 0, err[-3000:]
    for condition in ("machine: ", " CPUs (", "(redis-server ", "; taskq ", "sizes: backlogs"):
        assert condition in out, f"condition {condition!r} missing:\n{out}"
    table = out.split("-------", 1)[1]
    for row in ("claim (XREADGROUP COUNT 100)", "Redis memory per waiting task",
                "renew, all listed", "renew.lua, longest call", "reclaim.lua per call",
                "1,000 pending",
                "primes < 200,000", "Redis commands / bytes per no-op", "2 nodes x 1 proc",
                "1,000,000 B argument", "Redis memory per stored result", "all expired"):
        assert row in table, f"row {row!r} missing:\n{out}"
    if not HAS_MATPLOTLIB:
        return
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # six panels drawn, not an empty figure


def test_bench_scale_refuses_db_0_of_a_given_server() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--url", "redis://127.0.0.1:6379/0",
                           "--no-plot"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2
    assert "other than 0" in proc.stderr and "Traceback" not in proc.stderr
