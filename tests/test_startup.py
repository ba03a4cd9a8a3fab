"""Cold start: what ``taskq worker`` (and ``import taskq``) may import.

A node's start-up time is mostly imports (issue 14, target E: worker start → first
result). These tests pin down the modules a worker must not have loaded when it sends
its first claim, and that ``import taskq`` stays free of redis-py and the producer side,
so a gain cannot silently regress: one eager import in the wrong module fails them.
Each runs a fresh interpreter (``sys.modules`` of this test process says nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NOT_BEFORE_FIRST_CLAIM = (
    # the producer side and everything that stands on it
    "taskq.client", "taskq.compat", "taskq.local", "taskq.signed", "taskq.cli.run",
    "taskq.cli.inspect", "taskq.info", "taskq.broker.snapshot", "taskq.broker.rqcompat",
    "taskq.dashboard", "taskq.rq",
    # heavy optional parts: pickled tasks, --metrics, cron expressions, the extras
    "taskq.node.signed_runner", "cloudpickle", "taskq.node.metrics", "taskq.node.health",
    "prometheus_client", "croniter", "starlette", "uvicorn", "rq",
)
"""Module prefixes a default ``taskq worker`` must not import before its first claim."""

NOT_ON_IMPORT = ("redis", "hiredis", "taskq.broker", "taskq.node", "taskq.cli", *NOT_BEFORE_FIRST_CLAIM)
"""... nor a plain ``import taskq`` (a task module's ``@taskq.task``)."""

_ROOT = str(Path(__file__).resolve().parent.parent)

# Runs `taskq worker --burst` in this interpreter, noting sys.modules at its first claim.
_WORKER = textwrap.dedent("""
    import json, sys
    from taskq.broker import claim

    send, seen = claim.Claim.send, []

    def first_send(self, *args, **kwargs):
        if not seen:
            seen.append(sorted(sys.modules))
        return send(self, *args, **kwargs)

    claim.Claim.send = first_send
    sys.argv = ["taskq", *sys.argv[2:]]
    try:
        import runpy
        runpy.run_module("taskq", run_name="__main__")
    finally:
        with open(OUT, "w") as f:  # OUT: set by the test, before this code
            json.dump(seen[0] if seen else None, f)
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _offending(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def _modules_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                           "print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, env=_env(), timeout=50)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


@pytest.mark.timeout(60)
def test_worker_imports_nothing_it_does_not_need_before_its_first_claim(
        redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    code = f"OUT = {str(out)!r}\n" + _WORKER
    done = subprocess.run(
        [sys.executable, "-c", code, "-", "worker", "--burst", "--procs", "1", "--url", redis_url,
         "--queue", "startup"], capture_output=True, text=True, env=_env(), timeout=50)
    assert done.returncode == 0, done.stderr
    modules = json.loads(out.read_text())
    assert modules is not None, f"the worker never claimed:\n{done.stderr}"
    assert "taskq.node.node" in modules and "redis" in modules  # the hook saw a real start
    assert _offending(modules, NOT_BEFORE_FIRST_CLAIM) == []


def test_import_taskq_loads_no_redis_and_no_producer_side() -> None:
    modules = _modules_after("import taskq")
    assert "taskq.registry" in modules
    assert _offending(modules, NOT_ON_IMPORT) == []


def test_worker_help_loads_only_the_worker_command() -> None:
    modules = _modules_after(textwrap.dedent("""
        import contextlib, io
        from taskq.cli import main
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            main(["worker", "--help"])
    """))
    assert "taskq.cli.worker" in modules
    assert _offending(modules, NOT_BEFORE_FIRST_CLAIM) == []


def test_every_public_name_still_resolves() -> None:
    modules = _modules_after(textwrap.dedent("""
        import taskq
        missing = [n for n in taskq.__all__ if getattr(taskq, n, None) is None]
        assert not missing, missing
        from taskq import Client, Executor, Pool, periodic, progress, task
        import taskq.periodic  # the submodule must not rebind the decorator's name
        assert taskq.periodic is periodic and callable(periodic)
        assert set(taskq.__all__) <= set(dir(taskq))
    """))
    assert "taskq.client" in modules  # resolving Client did import it, on demand


def test_every_command_is_listed_and_loads_on_lookup() -> None:
    from taskq.cli import COMMANDS, cli

    assert sorted(cli.commands) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.commands[name]
        assert command.name == name
    assert cli.commands.get("no-such-command") is None
