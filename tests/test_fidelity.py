"""Drop-in fidelity (issue 9): taskq's errors are the stdlib's types where the stdlib
raises them, and nothing a result's payload does stops a client's reply listener."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import taskq
from taskq.errors import WorkerLostError

TESTS = Path(__file__).parent
SECRET = "fidelity-tests-" + "f" * 32
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")},
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "TASKQ_SECRET": SECRET}


class ExitOnLoad:
    """A result whose unpickling raises SystemExit (on the producer)."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (sys.exit, (3,))


class ExitOnDump:
    """A result whose pickling raises SystemExit (on the worker)."""

    def __reduce__(self) -> Any:
        raise SystemExit(1)


def exit_on_load() -> ExitOnLoad:
    return ExitOnLoad()


def exit_on_dump() -> ExitOnDump:
    return ExitOnDump()


def die() -> None:
    os._exit(7)


def test_worker_lost_is_broken_process_pool() -> None:
    err = WorkerLostError("exit code 7")
    assert isinstance(err, BrokenProcessPool) and isinstance(err, taskq.TaskError)


@pytest.mark.timeout(60)
def test_the_listener_survives_system_exit_while_loading_a_result(redis_url: str) -> None:
    with taskq.Executor(redis_url, secret=SECRET) as ex:
        bad, dumped, lost, good = (ex.submit(exit_on_load), ex.submit(exit_on_dump),
                                   ex.submit(die), ex.submit(pow, 2, 10))
        ex.client.flush(10)
        done = subprocess.run([sys.executable, "-m", "taskq", "--url", redis_url, "worker",
                               "--procs", "1", "--burst", "--import", "test_fidelity"],
                              env=ENV, capture_output=True, text=True, timeout=50)
        assert done.returncode == 0, done.stderr
        assert good.result(timeout=20) == 1024  # the listener lived on past the bad result
        with pytest.raises(taskq.TaskError, match="cannot load the result"):
            bad.result(timeout=20)
        with pytest.raises(SystemExit):  # as the stdlib: the pickling error itself
            dumped.result(timeout=20)
        with pytest.raises(BrokenProcessPool):  # what code written for the stdlib catches
            lost.result(timeout=20)
