"""``taskq dashboard`` and ``taskq exporter``: parse, build the app, serve it.

Importable without the ``dashboard`` extra (``taskq/cli/__init__.py`` registers these commands at
start-up): Starlette, uvicorn and prometheus_client are imported only when a command runs,
and their absence is a one-line error.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from typing import Any

import click

from taskq.config import Settings
from taskq.errors import ConfigError

EXTRA_HINT = "taskq dashboard needs the dashboard extra: pip install 'taskq[dashboard]'"


def _url(ctx: click.Context, url: str | None) -> str:
    root = ctx.find_root().obj or {}
    return Settings.from_env(url=url or root.get("url")).url


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so a busy port or a bad host is one line, not a traceback."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        click.echo(f"taskq: error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(what: str, host: str, port: int, prefix: str, build: Any) -> None:
    try:
        import uvicorn

        from taskq.broker import connect
        from taskq.dashboard.app import create_app
    except ImportError as exc:
        raise ConfigError(f"{EXTRA_HINT} ({exc})") from None
    client, app = build(connect, create_app)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"taskq {what}: serving http://{shown}:{bound}{prefix}/", err=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        client.close()


def _run(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ConfigError as exc:
        click.echo(f"taskq: error: {exc}", err=True)
        sys.exit(2)


url_option = click.option("--url", envvar="TASKQ_URL", default=None,
                          help="Redis URL (default redis://localhost:6379/0; env TASKQ_URL).")
host_option = click.option("--host", default="127.0.0.1", show_default=True,
                           help="Address to listen on (loopback unless given).")


@click.command()
@url_option
@host_option
@click.option("--port", type=click.IntRange(0, 65535), default=9181, show_default=True,
              help="Port to listen on (0: any free port, printed on stderr).")
@click.option("--auth", envvar="TASKQ_DASHBOARD_AUTH", default=None, metavar="USER:PASS",
              help="Require HTTP Basic USER:PASS (a value without ':' is a bearer token); "
                   "env TASKQ_DASHBOARD_AUTH. /healthz stays open.")
@click.option("--allow-actions", is_flag=True,
              help="Allow retrying and purging dead letters (read-only without it).")
@click.option("--url-prefix", default="", metavar="/PATH",
              help="Serve under this path, e.g. /taskq behind a reverse proxy.")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between samples of Redis.")
@click.pass_context
def dashboard(ctx: click.Context, url: str | None, host: str, port: int, auth: str | None,
              allow_actions: bool, url_prefix: str, interval: float) -> None:
    """The live web dashboard (and its /metrics): queues, nodes, pool processes, dead letters."""

    def build(connect: Any, create_app: Any) -> tuple[Any, Any]:
        client = connect(_url(ctx, url), retries=False, socket_connect_timeout=2.0,
                         socket_timeout=5.0)
        app = create_app(client, auth=auth, allow_actions=allow_actions, prefix=url_prefix,
                         interval=interval)
        return client, app

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if auth is None and not _is_loopback(host):
        click.echo(f"taskq: warning: listening on {host} without --auth: anyone who can reach "
                   "it sees the queues", err=True)
    _run(_serve, "dashboard", host, port, url_prefix, build)


@click.command()
@url_option
@host_option
@click.option("--port", type=click.IntRange(0, 65535), default=9182, show_default=True,
              help="Port to listen on (0: any free port, printed on stderr).")
@click.option("--auth", default=None, metavar="USER:PASS",
              help="Require HTTP Basic USER:PASS (or a bearer token) on /metrics.")
@click.pass_context
def exporter(ctx: click.Context, url: str | None, host: str, port: int, auth: str | None) -> None:
    """Only the queue-level Prometheus metrics (/metrics, /healthz): no UI, no actions."""

    def build(connect: Any, create_app: Any) -> tuple[Any, Any]:
        client = connect(_url(ctx, url), retries=False, socket_connect_timeout=2.0,
                         socket_timeout=5.0)
        return client, create_app(client, auth=auth, ui=False)

    _run(_serve, "exporter", host, port, "", build)
