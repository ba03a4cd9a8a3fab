"""A TCP proxy on 127.0.0.1 that adds a fixed one-way delay in each direction.

scripts/bench.py uses it for workload F only where ``tc netem`` cannot be used (a kernel
without sch_netem, no root): the worker node talks to Redis through it, so each of its
round trips costs ``2 x delay`` more. It is an approximation: the proxy adds its own
hand-off latency and CPU (scripts/bench.py also measures a 0 ms run through it as a
control), and coalesces whatever is due at once into one send.

    python scripts/bench_delayproxy.py --target 127.0.0.1:6379 --delay-ms 0.5

prints the port it listens on, then serves until killed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import sys
import threading
import time


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Forward src → dst, each chunk released ``delay`` seconds after it was read."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()

    def reader() -> None:
        while True:
            try:
                data = src.recv(262144)
            except OSError:
                data = b""
            with ready:
                queue.append((time.monotonic() + delay, data))
                ready.notify()
            if not data:
                return

    def writer() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)
            if data:  # and whatever else is already due: one send
                parts = [data]
                with ready:
                    now = time.monotonic()
                    while queue and queue[0][0] <= now and queue[0][1]:
                        parts.append(queue.popleft()[1])
                data = b"".join(parts)
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.close()
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the Redis server")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay (ms)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    opts = parser.parse_args()
    host, _, port = opts.target.rpartition(":")
    delay = opts.delay_ms / 1000.0
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", opts.port))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    sys.stdout.close()
    while True:
        conn, _ = server.accept()
        try:
            upstream = socket.create_connection((host, int(port)))
        except OSError:
            conn.close()
            continue
        for s in (conn, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(conn, upstream, delay)
        _pump(upstream, conn, delay)


if __name__ == "__main__":
    main()
