"""The node's HTTP endpoint (``--metrics [HOST:]PORT``): a small process of its own.

``/healthz`` must go 503 when the node is SIGSTOPped or wedged, and a thread of a stopped
process answers nothing, so HTTP is served by a separate process the node parent forks
before its pool (it holds none of the pool's pipes) and that dies with it
(``PR_SET_PDEATHSIG``). It sees the parent through:

- shared memory (a ``RawArray``): the monotonic time of the last loop turn and of the last
  successful lease renewal (``CLOCK_MONOTONIC`` is system-wide on Linux). ``/healthz`` is
  200 only if the loop turned within :data:`LOOP_STALE` seconds and a renewal succeeded
  within half a lease, else 503 with the reason;
- a pipe: for ``/metrics`` it sends a request number, the parent's loop (which waits on
  that pipe among its other waitables) answers with the rendered text, and no answer
  within :data:`SCRAPE_TIMEOUT` is a 503. Late answers to earlier requests are dropped.

The socket is bound in the parent, so a port in use is a one-line error at start.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from taskq.procs import detach_forked_child

log = logging.getLogger("taskq.node")

_CTX = multiprocessing.get_context("fork")
LOOP_STALE = 5.0
"""Seconds without a loop turn after which the node is unhealthy (one turn waits at most
the claim's 2 s block)."""
SCRAPE_TIMEOUT = 2.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LOOP, _RENEWED = 0, 1


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    clock: Any
    conn: Any
    max_renew_age: float
    lock: threading.Lock
    seq: int

    def __init__(self, host: str, port: int) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            problem = _health(self.server)
            self._reply(503 if problem else 200, (problem or "ok").encode() + b"\n",
                        "text/plain; charset=utf-8")
        elif path == "/metrics":
            text = _scrape(self.server)
            if text is None:
                self._reply(503, b"the node did not answer in time\n", "text/plain; charset=utf-8")
            else:
                self._reply(200, text, CONTENT_TYPE)
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def _health(server: _Server) -> str | None:
    """None if healthy, else why not."""
    now = time.monotonic()
    loop, renewed = server.clock[_LOOP], server.clock[_RENEWED]
    if now - loop > LOOP_STALE:
        return f"node loop has not run for {now - loop:.1f} s (stopped or wedged)"
    if renewed == 0.0:
        return "no lease renewal yet"
    if now - renewed > server.max_renew_age:
        return f"last successful lease renewal {now - renewed:.1f} s ago"
    return None


def _scrape(server: _Server) -> bytes | None:
    with server.lock:  # one request on the pipe at a time
        server.seq += 1
        seq = server.seq
        try:
            server.conn.send_bytes(struct.pack("!Q", seq))
            end = time.monotonic() + SCRAPE_TIMEOUT
            while server.conn.poll(max(0.0, end - time.monotonic())):
                data: bytes = server.conn.recv_bytes()
                if struct.unpack("!Q", data[:8])[0] == seq:
                    return data[8:]
        except (EOFError, OSError):
            pass
        return None


def _serve(server: _Server, parent_pid: int, parent_end: Any) -> None:
    parent_end.close()  # the parent's end of the scrape pipe is not ours
    detach_forked_child(parent_pid)
    server.serve_forever(poll_interval=0.5)


class HealthServer:
    """Parent side: the health clock, the scrape pipe, and the server process."""

    def __init__(self, host: str, port: int, lease: float) -> None:
        self._server = _Server(host, port)  # bound here: an error is the parent's, at once
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self.clock: Any = _CTX.RawArray("d", [0.0, 0.0])
        self.conn: Any
        self.conn, child_conn = _CTX.Pipe(duplex=True)
        s = self._server
        s.clock, s.conn, s.max_renew_age = self.clock, child_conn, lease / 2
        s.lock, s.seq = threading.Lock(), 0
        self._proc = _CTX.Process(target=_serve, args=(s, os.getpid(), self.conn),
                                  name="taskq-health",
                                  daemon=True)
        self._proc.start()
        child_conn.close()
        s.server_close()  # the child serves it; the pool forked next must not hold it
        log.info("serving /metrics and /healthz on http://%s:%d", *self.address[:2])

    @property
    def port(self) -> int:
        return self.address[1]

    def beat(self, now: float) -> None:
        """The loop turned (one store in shared memory)."""
        self.clock[_LOOP] = now

    def renewed(self, now: float) -> None:
        self.clock[_RENEWED] = now

    def answer(self, render: Callable[[], bytes]) -> None:
        """Answer the scrape requests waiting on the pipe (the loop saw it readable)."""
        try:
            while self.conn.poll():
                seq = self.conn.recv_bytes()[:8]
                self.conn.send_bytes(seq + render())
        except (EOFError, OSError):  # the server process is gone: stop listening to it
            log.warning("the metrics server process exited; /metrics and /healthz are down")
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._proc.kill()
            self._proc.join(5.0)
            self._proc.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
