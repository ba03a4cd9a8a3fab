"""scripts/chaos.py, CI size: real nodes, SIGKILLs, Redis restarts, poison; nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taskq.errors import EmbeddedRedisError
from taskq.local.embedded import find_redis_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_chaos_run_loses_nothing() -> None:
    try:
        find_redis_server()
    except EmbeddedRedisError as exc:
        pytest.skip(str(exc))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--quick", "--seed", "1"],
        capture_output=True, text=True, timeout=150, cwd=ROOT,
    )
    report = proc.stdout + "\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert rows["lost (no success outcome)"] == "0", report
    assert rows["completed"] == rows["tasks enqueued (good)"] == "2000", report
    assert rows["hung"] == "no" and rows["leaked processes"] == "none", report
    assert rows["verdict"] == "PASS", report
