"""``taskq enqueue``, ``taskq run``, ``taskq result`` and ``taskq cancel``: send tasks, wait
for them with a progress bar, print or cancel what they became.

How a command line becomes calls (a range task split into chunks, at most ``MAX_TASKS``),
how a batch's values are reduced for printing, and how the wait ends (results, timeout,
Ctrl-C, the local node's death) are written here once for all four commands.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import click
import redis

from taskq import registry
from taskq.broker import procs_serving
from taskq.cli.common import (
    POSITIVE,
    ArgsCommand,
    Failure,
    Interrupted,
    default,
    friendly_errors,
    global_options,
    import_modules,
    parse_arg,
    parse_duration,
    settings_for,
)
from taskq.client import Client
from taskq.config import Settings
from taskq.errors import ConfigError, TaskqError, UnknownTaskError

MAX_TASKS = 100_000
"""Most tasks one ``taskq enqueue`` splits a range into (each is a message in memory)."""

NO_NODE_CHECK_EVERY = 5.0
"""Seconds between the checks for a live node while ``taskq enqueue`` waits."""


def _plan(task_name: str, args: Sequence[Any], chunk_size: int) -> tuple[registry.TaskSpec, list[list[Any]]]:
    spec = registry.find_task(task_name)
    if spec is None:
        known = ", ".join(registry.task_names())
        raise UnknownTaskError(f"unknown task {task_name!r} (known: {known}; add yours with --import MODULE)")
    is_range = len(args) == 2 and all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    if spec.split_range and is_range:
        start, end = args
        if chunk_size < 1:
            raise ConfigError("--chunk-size must be at least 1")
        count = len(range(start, end, chunk_size))  # counted, not built
        if count > MAX_TASKS:
            raise ConfigError(
                f"{task_name} {start} {end} makes {count} tasks of --chunk-size {chunk_size}, "
                f"at most {MAX_TASKS} are sent at once: raise --chunk-size to at least "
                f"{-(-(end - start) // MAX_TASKS)}")
        calls = [[s, min(s + chunk_size, end)] for s in range(start, end, chunk_size)]
        for call in calls or [list(args)]:
            registry.check_call(spec, call, {})
        return spec, calls
    registry.check_call(spec, args, {})
    return spec, [list(args)]


def _submit_and_report(client: Client, spec: registry.TaskSpec, calls: list[list[Any]],
                       no_wait: bool, timeout: float | None,
                       node_died: Callable[[], str | None] | None = None,
                       delay: float | None = None) -> None:
    """Send the calls as one batch and wait for its result, with a progress bar. With
    ``node_died`` (``taskq run``'s own node), that node's death ends the wait; without it
    (``taskq enqueue``), a queue no live node serves is said once, and Ctrl-C says how to
    fetch the result later."""
    reduce = spec.reduce if len(calls) > 1 or spec.split_range else None
    futures, batch = client.submit_many(spec.name, calls, batch=True, reduce=reduce,
                                        delay=delay)
    assert batch is not None
    if no_wait:
        click.echo(batch.id)
        return
    try:
        _wait_for(client, futures, spec.name, batch.id, timeout, node_died)
    except KeyboardInterrupt:
        if node_died is not None:
            raise  # `taskq run`: its node stops with it, nothing to fetch later
        raise Interrupted(f"interrupted; batch {batch.id} goes on: "
                          f"`taskq result {batch.id}` later") from None
    values = [f.result() for f in futures]
    click.echo(_format(_reduce(reduce, values)))


def _wait_for(client: Client, futures: list[Future[Any]], label: str, batch_id: str,
              timeout: float | None, node_died: Callable[[], str | None] | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(futures)
    next_check, warned = time.monotonic(), False
    with click.progressbar(length=len(futures), label=label, file=sys.stderr,
                           show_pos=True) as bar:
        while pending:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                raise Failure(f"timed out; the tasks go on: `taskq result {batch_id}` later")
            problem = node_died() if node_died is not None else None
            if problem:
                raise Failure(problem)
            if node_died is None and not warned and time.monotonic() >= next_check:
                next_check = time.monotonic() + NO_NODE_CHECK_EVERY
                if procs_serving(client.redis, client.queue) == 0:
                    warned = True  # once: nodes may come, the wait goes on
                    click.echo(f"\ntaskq: no live node serves queue {client.queue!r}; "
                               "waiting… (start one: taskq worker)", err=True)
            finished, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            bar.update(len(finished))
            if len(futures) == 1 and pending:
                _show_progress(client, futures[0], bar, label)


def _show_progress(client: Client, fut: Future[Any], bar: Any, label: str) -> None:
    """A single long task: what it reports with ``taskq.progress`` goes in the bar's
    label (read about once a second; a batch keeps its done/total bar)."""
    with contextlib.suppress(TaskqError, redis.RedisError, ValueError):
        p = client.progress(fut)
        if p is not None:
            of = f"/{p.total:g}" if p.total is not None else ""
            bar.label = f"{label} {p.done:g}{of}"
            bar.render_progress()


def _reduce(how: str | None, values: list[Any]) -> Any:
    if how == "sum":
        return sum(values)
    return values[0] if len(values) == 1 else values


def _format(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@click.command(cls=ArgsCommand)
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--queue", "-q", default=None, help=f"Queue to use (default {default('queues')!r}).")
@click.option("--chunk-size", default=10_000, show_default=True,
              help="Items per task when a range task such as primes is split.")
@click.option("--no-wait", is_flag=True, help="Print the batch id and return at once.")
@click.option("--timeout", type=POSITIVE, default=None, help="Seconds to wait for results.")
@click.option("--delay", "delay_text", default=None, metavar="DURATION",
              help="Start no earlier than this from now: 90 (seconds), 30s, 5m, 1h.")
@click.option("--wait-replicas", type=click.IntRange(min=0), default=None, metavar="N",
              help="Count the enqueue done only once N replicas have it (WAIT N; env "
                   "TASKQ_WAIT_REPLICAS; default 0).")
@global_options
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions to register (repeatable).")
@click.pass_context
@friendly_errors
def enqueue(ctx: click.Context, task: str, args: tuple[str, ...], queue: str | None,
            chunk_size: int, no_wait: bool, timeout: float | None, delay_text: str | None,
            wait_replicas: int | None, imports: tuple[str, ...]) -> None:
    """Enqueue TASK with ARGS (JSON literals, else strings), wait, and print its result.

    A range task such as `primes START END` is split into chunks of --chunk-size.
    """
    delay = None if delay_text is None else parse_duration("--delay", delay_text)
    import_modules(imports)
    spec, calls = _plan(task, [parse_arg(a) for a in args], chunk_size)
    settings = settings_for(ctx, queues=(queue,) if queue else None, wait_replicas=wait_replicas)
    with Client(settings=settings) as client:
        _submit_and_report(client, spec, calls, no_wait, timeout, delay=delay)


@click.command(cls=ArgsCommand)
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--procs", "-p", type=int, default=None, help="Pool processes (default: CPU count).")
@click.option("--chunk-size", default=10_000, show_default=True,
              help="Items per task when a range task such as primes is split.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions to register (repeatable).")
@friendly_errors
def run(task: str, args: tuple[str, ...], procs: int | None, chunk_size: int,
        imports: tuple[str, ...]) -> None:
    """All in one: an embedded Redis, a local worker node, TASK ARGS, the result.

    No Redis installation needed: `taskq run primes 0 50000 --procs 4`.
    """
    from taskq.local.cluster import LocalCluster

    import_modules(imports)
    spec, calls = _plan(task, [parse_arg(a) for a in args], chunk_size)
    settings = Settings.from_env(procs=procs)
    with LocalCluster(settings.procs, queue=settings.queues[0], imports=imports) as cluster, \
            Client(settings=settings.with_(url=cluster.url, secret=cluster.secret)) as client:
        _submit_and_report(client, spec, calls, False, None, cluster.node_died)


@click.command()
@click.argument("id")
@click.option("--queue", "-q", default=None, help=f"Queue the task ran on (default {default('queues')!r}).")
@global_options
@click.pass_context
@friendly_errors
def result(ctx: click.Context, id: str, queue: str | None) -> None:
    """Print the result of a finished task or batch (exit 1 if it failed)."""
    settings = settings_for(ctx, queues=(queue,) if queue else None)
    with Client(settings=settings) as client:
        outcome = client.result(id)
        if outcome is not None:
            click.echo(_format(outcome.result()))
            return
        status = client.broker.batch_status(id)
        if not status:
            raise Failure(f"no result for {id!r}: unknown id, not finished, or expired")
        total, done, failed = (int(status.get(k, 0)) for k in ("total", "done", "failed"))
        if done + failed < total:
            raise Failure(f"batch {id}: {done + failed}/{total} finished so far")
        outcomes = client.batch_results(id, total)
        if any(o is None for o in outcomes):
            raise Failure(f"batch {id}: some results have expired")
        values = [o.result() for o in outcomes if o is not None]
        click.echo(_format(_reduce(status.get("reduce"), values)))


@click.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--queue", "-q", default=None, help=f"Queue of the tasks (default {default('queues')!r}).")
@global_options
@click.pass_context
@friendly_errors
def cancel(ctx: click.Context, ids: tuple[str, ...], queue: str | None) -> None:
    """Cancel tasks (or every task of a batch) by id: a queued one never starts, a
    running one's process is killed. Prints one line per id; exit 1 if none was cancelled."""
    settings = settings_for(ctx, queues=(queue,) if queue else None)
    cancelled = 0
    with Client(settings=settings) as client:
        for id_ in ids:
            if client.broker.batch_status(id_):
                n = client.cancel_batch(id_)
                click.echo(f"{id_}: {n} task(s) of the batch cancelled")
            else:
                n = int(client.cancel(id_))
                click.echo(f"{id_}: {'cancelled' if n else 'not queued or running'}")
            cancelled += n
    if not cancelled:
        raise Failure("nothing was cancelled")
