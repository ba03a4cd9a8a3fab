"""Running a script of scripts/ end to end from a test, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: Path, *args: str, timeout: float) -> tuple[int, str, str]:
    """Run ``script`` with ``args`` from the repo root, with its own Redis (no
    ``TASKQ_URL``); (exit code, stdout, stderr). Past ``timeout`` s it gets SIGTERM (it
    stops its Redis and workers), then SIGKILL, and the test fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("TASKQ_URL", None)  # the script must start its own Redis
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # lets it stop its Redis and workers
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # its guard process still stops what it started
            out, err = proc.communicate()
        pytest.fail(f"{script.name} {' '.join(args)} took over {timeout:g} s:\n{err[-3000:]}")
    return proc.returncode, out, err
