"""``taskq worker``: the options of a worker node, checked in one line each before it
starts (initializer, its JSON arguments, the metrics address, Redis reachable), then
:class:`~taskq.node.node.Node` runs until a signal stops it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
import redis

from taskq import registry
from taskq.broker import unreachable
from taskq.cli.common import POSITIVE, default, friendly_errors, global_options, import_modules, settings_for
from taskq.config import parse_metrics
from taskq.errors import ConfigError


@click.command()
@click.option("--procs", "-p", type=int, default=None, help="Pool processes (default: CPU count).")
@click.option("--queue", "-q", "queues", multiple=True,
              help=f"Queue to serve (repeatable; default {default('queues')!r}).")
@click.option("--batch", "claim_size", type=int, default=None,
              help=f"Claim size: most tasks taken by one claim, one Redis call "
                   f"(default {default('claim_size')}; env TASKQ_BATCH).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions to register (repeatable).")
@click.option("--init", "init", default=None, metavar="MODULE:FUNC",
              help="Per-process initializer, run once in every pool process.")
@click.option("--init-args", default=None, metavar="JSON", help="JSON array of initializer arguments.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing is in flight.")
@click.option("--lease", type=float, default=None,
              help=f"Seconds before an unrenewed task is reclaimed (default {default('lease')}).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None,
              help="Replace a process after N tasks.")
@click.option("--max-memory-per-child", type=POSITIVE, default=None, metavar="MB",
              help="Replace a process whose resident memory passes MB.")
@click.option("--shutdown-timeout", type=POSITIVE, default=None,
              help=f"Seconds a graceful stop waits for running tasks "
                   f"(default {default('shutdown_timeout')}).")
@click.option("--max-deliveries", type=int, default=None,
              help=f"Dead-letter a task whose node was lost this many times "
                   f"(default {default('max_deliveries')}).")
@click.option("--hard-timeout-grace", type=float, default=None,
              help=f"Seconds past a task's time limit before its process is killed "
                   f"(default {default('hard_timeout_grace')}).")
@click.option("--metrics", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus /metrics and /healthz (a bare port binds 127.0.0.1; "
                   "env TASKQ_METRICS; default off).")
@click.option("--require-signed", is_flag=True, default=None,
              help="Dead-letter every unsigned entry (needs TASKQ_SECRET; env TASKQ_REQUIRE_SIGNED=1).")
@click.option("--wait-replicas", type=click.IntRange(min=0), default=None, metavar="N",
              help="Report a completion done only once N replicas have it (WAIT N; env "
                   "TASKQ_WAIT_REPLICAS; default 0).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"], case_sensitive=False),
              help="json: one JSON object per line (ts, level, logger, message, fields).")
@global_options
@click.pass_context
@friendly_errors
def worker(ctx: click.Context, procs: int | None, queues: tuple[str, ...], claim_size: int | None,
           imports: tuple[str, ...], init: str | None, init_args: str | None, burst: bool,
           lease: float | None, max_tasks_per_child: int | None,
           max_memory_per_child: float | None, shutdown_timeout: float | None,
           max_deliveries: int | None, hard_timeout_grace: float | None, metrics: str | None,
           require_signed: bool | None, wait_replicas: int | None, log_level: str,
           log_format: str) -> None:
    """Run a worker node until SIGTERM/SIGINT (a second signal stops at once)."""
    from taskq.node.logs import configure
    from taskq.node.node import Node

    configure(log_level, log_format.lower())
    import_modules(imports)
    parsed_args = _init_args(init, init_args)
    if init:
        registry.resolve_callable(init)  # fail here, in one line, not in every process
    settings = settings_for(
        ctx, procs=procs, queues=queues or None, claim_size=claim_size, lease=lease,
        max_tasks_per_child=max_tasks_per_child, shutdown_timeout=shutdown_timeout,
        max_deliveries=max_deliveries, hard_timeout_grace=hard_timeout_grace,
        max_memory_per_child=int(max_memory_per_child * 1024 * 1024) if max_memory_per_child else None,
        metrics=parse_metrics(metrics) if metrics else None,
        require_signed=require_signed or None, wait_replicas=wait_replicas,
    )
    if procs is None:
        from taskq.cpus import describe_cpus

        choice = describe_cpus()
        if choice.cpus == settings.procs:  # else TASKQ_PROCS chose
            logging.getLogger("taskq.node").info(
                "using %d processes: %s (choose with --procs or TASKQ_PROCS)",
                settings.procs, choice.reason)
    node = Node(settings, imports=imports, init=init, init_args=parsed_args, burst=burst)
    try:
        node.client.ping()
    except redis.RedisError as exc:
        raise unreachable(settings.url, exc) from None
    try:
        code = node.run()
    except OSError as exc:  # the metrics port: in use, or a host that is not ours
        if settings.metrics is None or node.telemetry.health is not None:
            raise
        raise ConfigError(f"cannot serve metrics on {_hostport(settings.metrics)}: "
                          f"{exc.strerror or exc}") from None
    sys.exit(code)


def _init_args(init: str | None, init_args: str | None) -> list[Any]:
    """--init-args as the initializer's argument list (empty when not given)."""
    if init_args is None:
        return []
    try:
        parsed = json.loads(init_args)
    except ValueError as exc:
        raise ConfigError(f"--init-args is not valid JSON: {exc}") from None
    if not isinstance(parsed, list):
        raise ConfigError("--init-args must be a JSON array of arguments")
    if not init:
        raise ConfigError("--init-args needs --init MODULE:FUNC (the initializer they are for)")
    return parsed


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
