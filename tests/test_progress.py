"""Progress from inside a task: seen several times while it runs (coalesced by the node
to about one write a second), through ``on_progress`` and ``client.progress``, against a
real Redis and a real ``taskq worker`` (this module is also the worker's task module)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskq
from taskq.cli import run as cli
from taskq.client.replies import Progress

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@taskq.task(name="progress.steps")
def steps(n: int, pause: float) -> int:
    for i in range(n):
        time.sleep(pause)
        taskq.progress(i + 1, n, stage="work")  # many calls: the node writes ~1/s
    return n


@pytest.fixture
def worker(redis_url: str) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "1",
         "--import", "test_progress"], env=ENV, stderr=subprocess.DEVNULL)
    yield
    proc.kill()
    proc.wait(timeout=10)


class _Bar:
    label, rendered = "", False

    def render_progress(self) -> None:
        self.rendered = True


def test_progress_is_a_no_op_outside_a_task() -> None:
    assert taskq.progress(1, 2, note="x") is None


@pytest.mark.timeout(60)
def test_progress_is_seen_several_times_while_the_task_runs(redis_url: str, worker: None) -> None:
    seen: list[Progress] = []
    several = threading.Event()

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if len(seen) >= 3:
            several.set()

    with taskq.Client(redis_url) as client:
        fut = client.apply("progress.steps", (80, 0.05), on_progress=on_progress)
        assert several.wait(20), seen
        mid = client.progress(fut)
        assert mid is not None and mid.total == 80 and 0 < mid.done <= 80
        assert mid.info == {"stage": "work"} and abs(mid.at - time.time()) < 30
        assert fut.result(timeout=30) == 80
        assert client.progress("no-such-task") is None
        bar = _Bar()  # taskq enqueue's bar for a single task shows its progress
        cli._show_progress(client, fut, bar, "progress.steps")
        assert bar.rendered and bar.label.startswith("progress.steps ") and "/80" in bar.label
    dones = [p.done for p in seen]
    assert dones == sorted(dones) and len(set(dones)) >= 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert min(gaps) > 0.5  # coalesced: about one write a second, not one per call
