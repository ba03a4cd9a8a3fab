"""Every tutorial program in examples/, ported to taskq by changing its import line, prints
what the stdlib original prints.

The stdlib original is rebuilt from the example by undoing that one line, and both run
as subprocesses (taskq in local mode: embedded Redis, no URL), a few at a time. One
example also runs against a remote worker node (TASKQ_URL + a `taskq worker`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PORTS = {  # the one changed line: taskq version -> stdlib version
    "import taskq as multiprocessing": "import multiprocessing",
    "from taskq import ProcessPoolExecutor, as_completed":
        "from concurrent.futures import ProcessPoolExecutor, as_completed",
    "from taskq import ProcessPoolExecutor": "from concurrent.futures import ProcessPoolExecutor",
}
NAMES = sorted(p.name for p in EXAMPLES.glob("ex*.py"))
# Lines printed in completion order are compared as a multiset (as_completed: all lines);
# prints from two pool processes at once may even interleave within a line (in the stdlib
# too): those are compared as the multiset of messages, then the parent's last line.
UNORDERED = {"ex03_as_completed.py"}
INTERLEAVED = {"ex07_apply_async.py": re.compile(r"Sent: \w@test\.com")}
EXPECTED = {  # what each stdlib original prints (below 40,000 there are 4203 primes)
    "ex01_executor_map.py": "Total primes found: 4203\n",
    "ex02_submit.py": "100\n400\n900\n",
    "ex03_as_completed.py": "1 -> 2\n2 -> 4\n3 -> 6\n4 -> 8\n5 -> 10\n",
    "ex04_pool_map_primes.py": "Total primes: 5133\n",
    "ex05_pool_map_square.py": "[1, 4, 9, 16, 25, 36, 49, 64]\n",
    "ex06_pool_imap.py": "".join(f"Got: {2 * i}\n" for i in range(10)),
    "ex07_apply_async.py": "Sent: a@test.com\nSent: b@test.com\nSent: c@test.com\nAll notifications sent\n",
    "ex08_passing_data.py": "[[12.0, 16.0], [18.0, 20.0], [14.0, 22.0, 24.0]]\n",
    "ex09_initializer.py": "[10, 20, 30]\n",
    "ex10_shared_value.py": "Final count: 400000\n",
}
Done = Future[subprocess.CompletedProcess[str]]
Runs = dict[str, tuple[Done, Done]]
ENV = {k: v for k, v in os.environ.items() if k not in ("TASKQ_URL", "TASKQ_SECRET", "TASKQ_QUEUE")}


def stdlib_source(source: str) -> str:
    """The original program: exactly one line differs."""
    lines = source.splitlines(keepends=True)
    changed = [i for i, line in enumerate(lines) if line.rstrip("\n") in PORTS]
    assert len(changed) == 1, "an example must differ from the stdlib in its import line only"
    lines[changed[0]] = PORTS[lines[changed[0]].rstrip("\n")] + "\n"
    return "".join(lines)


def run(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], cwd=path.parent, env=env or ENV,
                          capture_output=True, text=True, timeout=120)


def normalized(name: str, out: str) -> list[str]:
    lines = out.splitlines()
    if name in INTERLEAVED:
        return sorted(INTERLEAVED[name].findall(out)) + lines[-1:]
    return sorted(lines) if name in UNORDERED else lines


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Both versions of every example, run in the background, four programs at a time."""
    originals = tmp_path_factory.mktemp("stdlib")
    with ThreadPoolExecutor(4) as pool:
        runs = {}
        for name in NAMES:
            original = originals / name
            original.write_text(stdlib_source((EXAMPLES / name).read_text()))
            runs[name] = (pool.submit(run, EXAMPLES / name), pool.submit(run, original))
        yield runs


def test_every_example_has_its_expected_output() -> None:
    assert sorted(EXPECTED) == NAMES  # a new example comes with what it must print


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NAMES)
def test_example_prints_what_the_stdlib_prints(name: str, outputs: Runs) -> None:
    ported, original = (f.result(timeout=280) for f in outputs[name])
    assert ported.returncode == 0, ported.stderr
    assert original.returncode == 0, original.stderr
    assert "Traceback" not in ported.stderr, ported.stderr
    expected = normalized(name, EXPECTED[name])
    assert normalized(name, original.stdout) == expected
    assert normalized(name, ported.stdout) == expected


@pytest.mark.timeout(120)
def test_examples_run_on_a_remote_worker_node(redis_url: str) -> None:
    """The same programs, unchanged, against a worker node that has the shared secret."""
    secret = os.urandom(16).hex()
    env = {**ENV, "TASKQ_URL": redis_url, "TASKQ_SECRET": secret}
    node = subprocess.Popen([sys.executable, "-m", "taskq", "worker", "--procs", "2",
                             "--log-level", "warning"], env=env, cwd="/")
    try:
        for name in ("ex09_initializer.py", "ex04_pool_map_primes.py", "ex01_executor_map.py"):
            done = run(EXAMPLES / name, env)
            assert (done.returncode, done.stdout) == (0, EXPECTED[name]), done.stderr
    finally:
        node.terminate()
        node.wait(timeout=30)
