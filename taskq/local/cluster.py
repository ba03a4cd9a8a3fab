"""A whole taskq on this machine: an embedded Redis plus one local worker node.

Used by ``taskq run`` and by an ``Executor``/``Pool`` given no URL (neither argument nor
``TASKQ_URL``), so programs written against taskq run anywhere after ``pip install``.
A fresh shared secret is generated for the node (passed as ``TASKQ_SECRET``), so
arbitrary callables and pickled arguments work out of the box and stay private to it.

The node is a ``taskq worker`` subprocess: its pool processes inherit this program's
stdout/stderr (``print`` in a task shows up, unbuffered) and ``sys.path`` (so functions
importable here import there). It is told to die with this process (Linux
``PR_SET_PDEATHSIG``), and is stopped at interpreter exit, once the program's work is
done and its shared values are written back (:mod:`taskq.local.lifetime`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from taskq.config import DEFAULT_QUEUE
from taskq.cpus import available_cpus
from taskq.errors import ConfigError
from taskq.local import lifetime
from taskq.local.embedded import EmbeddedRedis

_die_with_parent = lifetime.die_with_parent


class LocalCluster:
    """An embedded Redis and a local worker node with ``procs`` processes.

    ``url`` and ``secret`` are what a :class:`~taskq.Client` needs to use it. ``on_death``
    is called (from a watcher thread) with a one-line reason if the node dies on its own.
    """

    def __init__(
        self,
        procs: int | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        imports: Sequence[str] = (),
        max_tasks_per_child: int | None = None,
        log_level: str = "warning",
        on_death: Callable[[str], None] | None = None,
    ) -> None:
        self.procs = procs if procs is not None else available_cpus()
        if self.procs < 1:
            raise ConfigError(f"the number of processes must be at least 1, got {self.procs}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ConfigError(f"maxtasksperchild must be at least 1, got {max_tasks_per_child}")
        self.queue = queue
        self.imports = tuple(imports)
        self.max_tasks_per_child = max_tasks_per_child
        self.log_level = log_level
        self.secret = os.urandom(32).hex().encode()
        self.on_death = on_death
        self.server = EmbeddedRedis()
        self.node: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalCluster:
        """Start Redis (waits for it) and the node (does not: tasks queue meanwhile)."""
        if self.node is not None:
            return self
        self.server.start()
        cmd = [sys.executable, "-m", "taskq", "--url", self.url, "worker",
               "--procs", str(self.procs), "--queue", self.queue, "--log-level", self.log_level]
        if self.max_tasks_per_child is not None:
            cmd += ["--max-tasks-per-child", str(self.max_tasks_per_child)]
        for module in self.imports:
            cmd += ["--import", module]
        env = {**os.environ, "TASKQ_SECRET": self.secret.decode(), "TASKQ_URL": self.url,
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}
        try:
            self.node = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        except BaseException:
            self.server.stop()
            raise
        lifetime.at_exit(lifetime.Phase.STOP_NODES, self._at_exit)
        self._watcher = threading.Thread(target=self._watch, name="taskq-local-node", daemon=True)
        self._watcher.start()
        return self

    def node_died(self) -> str | None:
        """Why the node is gone, or None while it runs (or was never started)."""
        code = None if self.node is None else self.node.poll()
        if code is None or self._stopping.is_set():
            return None
        return f"the local worker node exited with code {code}"

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            reason = self.node_died()
            if reason is not None:
                if self.on_death is not None:
                    self.on_death(reason)
                return

    def stop(self, *, kill: bool = False) -> None:
        """Stop the node (SIGTERM: finish running tasks; ``kill``: at once), then Redis."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        lifetime.cancel(self._at_exit)
        node, self.node = self.node, None
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            if kill:
                node.send_signal(signal.SIGTERM)  # a second signal: leave now
            try:
                node.wait(timeout=2 if kill else 30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=1)
        self.server.stop()

    def _at_exit(self) -> None:
        """Phase STOP_NODES: pending work and shared write-backs are done by now (the
        earlier phases), so nobody needs the node any more: stop at once."""
        self.stop(kill=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.node is not None and self.node.poll() is None else "stopped"
        return f"<LocalCluster procs={self.procs} queue={self.queue!r} {state}>"
