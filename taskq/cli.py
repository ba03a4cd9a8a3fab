"""The ``taskq`` command: parse, call the public API, print.

Exit codes: 0 ok, 1 a task or Redis failed, 2 usage error. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import redis

from taskq import registry
from taskq.broker import REDIS_DOWN, Broker, connect, procs_serving, unreachable
from taskq.client import Client
from taskq.config import DEFAULTS, Settings, parse_metrics
from taskq.errors import BrokerError, ConfigError, TaskError, TaskqError, UnknownTaskError
from taskq.message import Entry

F = TypeVar("F", bound=Callable[..., Any])


class Failure(Exception):
    """A one-line failure with exit code 1 (a task failed, nothing found)."""


class Interrupted(Exception):
    """Ctrl-C, with what to do next (exit code 130)."""


def friendly_errors(fn: F) -> F:
    """Turn every expected error into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UnknownTaskError, TypeError, ValueError) as exc:
            _usage_error(str(exc))
        except TaskError as exc:
            _fail(f"task failed: {exc}")
        except (Failure, BrokerError, TaskqError) as exc:
            _fail(str(exc))
        except REDIS_DOWN as exc:
            _fail(str(unreachable(_current_url(), exc)))
        except redis.RedisError as exc:
            _fail(f"Redis error: {exc}")
        except Interrupted as exc:
            click.echo(f"taskq: {exc}", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("taskq: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _current_url() -> str:
    """The URL the running command uses (for an error message: it is masked there)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().obj.get("url") if ctx is not None and ctx.find_root().obj else None
    try:
        return Settings.from_env(url=given).url
    except TaskqError:
        return given or "?"


def _fail(message: str) -> None:
    click.echo(f"taskq: error: {message}", err=True)
    sys.exit(1)


def _usage_error(message: str) -> None:
    click.echo(f"taskq: error: {message}", err=True)
    sys.exit(2)


def parse_arg(text: str) -> Any:
    """A CLI argument is a JSON literal where it parses (``10``, ``[1,2]``), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def import_modules(modules: Sequence[str]) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules
    for module in modules:
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ConfigError(f"no module named {module!r} (is it on PYTHONPATH?)")
    registry.import_task_modules(modules)


def _default(name: str) -> str:
    """A Settings default as the help texts quote it: written once, in config.py."""
    value = getattr(DEFAULTS, name)
    if isinstance(value, tuple):
        value = ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    return Settings.from_env(url=ctx.obj["url"], **overrides)


url_option = click.option(
    "--url", envvar="TASKQ_URL", default=None,
    help=f"Redis URL (default {_default('url')}; env TASKQ_URL).",
)


def _store_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:  # given after the subcommand: it wins over the group's
        ctx.find_root().ensure_object(dict)["url"] = value


def global_options(fn: F) -> F:
    """The group's options, accepted after the subcommand too (``taskq worker --url U``,
    as rq and celery users type it)."""
    return click.option(
        "--url", default=None, expose_value=False, is_eager=True, callback=_store_url,
        help=f"Redis URL (default {_default('url')}; env TASKQ_URL).")(fn)


class ArgsCommand(click.Command):
    """A command whose ARGS may be negative numbers (``taskq enqueue primes -5 5``): an
    unknown option that is not a number is still an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {})["ignore_unknown_options"] = True
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        for arg in ctx.params.get("args", ()):
            if arg.startswith("-") and not _is_number(arg):
                raise click.NoSuchOption(arg, ctx=ctx)
        return super().invoke(ctx)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_POSITIVE = click.FloatRange(min=0, min_open=True)
MAX_TASKS = 100_000
"""Most tasks one ``taskq enqueue`` splits a range into (each is a message in memory)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@url_option
@click.version_option(package_name="taskq")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """taskq: CPU tasks over Redis, claimed in bulk by worker nodes."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url


# -- enqueue / run ---------------------------------------------------------------------


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


NO_NODE_CHECK_EVERY = 5.0
"""Seconds between the checks for a live node while ``taskq enqueue`` waits."""


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


@cli.command(cls=ArgsCommand)
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--queue", "-q", default=None, help=f"Queue to use (default {_default('queues')!r}).")
@click.option("--chunk-size", default=10_000, show_default=True,
              help="Items per task when a range task such as primes is split.")
@click.option("--no-wait", is_flag=True, help="Print the batch id and return at once.")
@click.option("--timeout", type=_POSITIVE, default=None, help="Seconds to wait for results.")
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
    settings = _settings(ctx, queues=(queue,) if queue else None, wait_replicas=wait_replicas)
    with Client(settings=settings) as client:
        _submit_and_report(client, spec, calls, no_wait, timeout, delay=delay)


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(option: str, text: str) -> float:
    """``90`` / ``30s`` / ``5m`` / ``1h`` / ``2d`` → seconds; ConfigError otherwise."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:].isalpha() else ""
    try:
        seconds = float(value[:len(value) - len(unit)]) * _UNITS[unit]
    except (KeyError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"{option}: expected a duration such as 90, 30s, 5m or 1h, "
                          f"got {text!r}")
    return seconds


@cli.command(cls=ArgsCommand)
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


# -- worker ----------------------------------------------------------------------------


@cli.command()
@click.option("--procs", "-p", type=int, default=None, help="Pool processes (default: CPU count).")
@click.option("--queue", "-q", "queues", multiple=True,
              help=f"Queue to serve (repeatable; default {_default('queues')!r}).")
@click.option("--batch", "claim_size", type=int, default=None,
              help=f"Claim size: most tasks taken by one claim, one Redis call "
                   f"(default {_default('claim_size')}; env TASKQ_BATCH).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module whose @task functions to register (repeatable).")
@click.option("--init", "init", default=None, metavar="MODULE:FUNC",
              help="Per-process initializer, run once in every pool process.")
@click.option("--init-args", default=None, metavar="JSON", help="JSON array of initializer arguments.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing is in flight.")
@click.option("--lease", type=float, default=None,
              help=f"Seconds before an unrenewed task is reclaimed (default {_default('lease')}).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), default=None,
              help="Replace a process after N tasks.")
@click.option("--max-memory-per-child", type=_POSITIVE, default=None, metavar="MB",
              help="Replace a process whose resident memory passes MB.")
@click.option("--shutdown-timeout", type=_POSITIVE, default=None,
              help=f"Seconds a graceful stop waits for running tasks "
                   f"(default {_default('shutdown_timeout')}).")
@click.option("--max-deliveries", type=int, default=None,
              help=f"Dead-letter a task whose node was lost this many times "
                   f"(default {_default('max_deliveries')}).")
@click.option("--hard-timeout-grace", type=float, default=None,
              help=f"Seconds past a task's time limit before its process is killed "
                   f"(default {_default('hard_timeout_grace')}).")
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
    parsed_args: list[Any] = []
    if init_args is not None:
        try:
            parsed_args = json.loads(init_args)
        except ValueError as exc:
            raise ConfigError(f"--init-args is not valid JSON: {exc}") from None
        if not isinstance(parsed_args, list):
            raise ConfigError("--init-args must be a JSON array of arguments")
        if not init:
            raise ConfigError("--init-args needs --init MODULE:FUNC (the initializer they are for)")
    if init:
        registry.resolve_callable(init)  # fail here, in one line, not in every process
    settings = _settings(
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


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- inspection ------------------------------------------------------------------------


@cli.command()
@click.argument("id")
@click.option("--queue", "-q", default=None, help=f"Queue the task ran on (default {_default('queues')!r}).")
@global_options
@click.pass_context
@friendly_errors
def result(ctx: click.Context, id: str, queue: str | None) -> None:
    """Print the result of a finished task or batch (exit 1 if it failed)."""
    settings = _settings(ctx, queues=(queue,) if queue else None)
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


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--queue", "-q", default=None, help=f"Queue of the tasks (default {_default('queues')!r}).")
@global_options
@click.pass_context
@friendly_errors
def cancel(ctx: click.Context, ids: tuple[str, ...], queue: str | None) -> None:
    """Cancel tasks (or every task of a batch) by id: a queued one never starts, a
    running one's process is killed. Prints one line per id; exit 1 if none was cancelled."""
    settings = _settings(ctx, queues=(queue,) if queue else None)
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between the two samples the rates come from (0: no rates).")
@click.option("--queue", "-q", "queues", multiple=True,
              help="Only this queue, and the nodes serving it (repeatable).")
@global_options
@click.pass_context
@friendly_errors
def info(ctx: click.Context, as_json: bool, interval: float, queues: tuple[str, ...]) -> None:
    """Each queue's numbers, oldest waiting task and rates; live nodes and their processes.

    done: finished with a result; failed: finished with the task's own error; dead: in
    the dead-letter stream now (`taskq dead list`), not counted in failed."""
    from taskq.broker import snapshot
    from taskq.info import as_json as info_json
    from taskq.info import as_text, only_queues, rates_between

    if interval < 0:
        raise ConfigError("--interval must be >= 0")
    settings = _settings(ctx, queues=queues or None)  # validates the names
    client = connect(settings.url, socket_connect_timeout=5.0, socket_timeout=10.0)
    try:
        first = snapshot.take(client)
        if interval:
            time.sleep(interval)  # rates need two samples; nothing to wait on but time
            snap = snapshot.take(client)
        else:
            snap = first
    except redis.RedisError as exc:
        raise unreachable(settings.url, exc) from None
    if queues:
        snap = only_queues(snap, queues)
    rates = rates_between(first, snap) if interval else {}
    click.echo(json.dumps(info_json(snap, rates), sort_keys=True) if as_json
               else as_text(snap, rates))


@cli.group()
def dead() -> None:
    """Inspect, retry or purge dead-lettered tasks."""


def _dead_broker(ctx: click.Context, queue: str | None) -> Broker:
    settings = _settings(ctx.find_root(), queues=(queue,) if queue else None)
    client = connect(settings.url, socket_connect_timeout=5.0, socket_timeout=10.0)
    return Broker(client, settings.queues[0])


@dead.command("list")
@click.option("--queue", "-q", default=None)
@click.option("--limit", default=100, show_default=True)
@global_options
@click.pass_context
@friendly_errors
def dead_list(ctx: click.Context, queue: str | None, limit: int) -> None:
    """List dead-lettered tasks, one a line: dead-letter id, task id, task, time (UTC),
    reason, error. No header: the first column feeds `taskq dead retry`."""
    rows = [_dead_row(dead_id, fields)
            for dead_id, fields in _dead_broker(ctx, queue).dead_entries(limit)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, *row[4:]]).rstrip())


def _dead_row(dead_id: str, fields: dict[bytes, bytes]) -> tuple[str, ...]:
    """One dead letter as text cells; whatever it holds, it prints (it may be a forgery)."""
    def text(value: Any, most: int) -> str:
        flat = " ".join(str(value).split())
        return flat if len(flat) <= most else flat[:most - 1] + "…"

    task_id = name = "?"
    with contextlib.suppress(Exception):
        env = json.loads(Entry.unpack(fields[b"packed"]).body)
        task_id, name = text(env.get("id", "?"), 40), text(env.get("t", "?"), 40)
    error = fields.get(b"error", b"").decode(errors="replace")
    with contextlib.suppress(Exception):
        triple = json.loads(error)["e"]
        error = f"{triple[0]}: {triple[1]}"
    when = datetime.fromtimestamp(int(dead_id.split("-")[0]) / 1000, timezone.utc)
    return (dead_id, task_id, name, when.strftime("%Y-%m-%d %H:%M:%S"),
            text(fields.get(b"reason", b"").decode(errors="replace"), 60), text(error, 100))


@dead.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Retry every dead-lettered task.")
@click.option("--queue", "-q", default=None)
@global_options
@click.pass_context
@friendly_errors
def dead_retry(ctx: click.Context, ids: tuple[str, ...], all_: bool, queue: str | None) -> None:
    """Put dead-lettered tasks back on the queue (IDs from `taskq dead list`)."""
    if not ids and not all_:
        raise ConfigError("give dead-letter IDs or --all")
    n = _dead_broker(ctx, queue).dead_retry(None if all_ else list(ids))
    if not all_ and n < len(set(ids)):
        raise Failure(f"requeued {n} of {len(set(ids))}: no dead letter with "
                      f"{'that id' if len(ids) == 1 else 'some of those ids'} on this queue "
                      "(see `taskq dead list`)")
    click.echo(f"requeued {n} task(s)")


@dead.command("purge")
@click.option("--queue", "-q", default=None)
@global_options
@click.pass_context
@friendly_errors
def dead_purge(ctx: click.Context, queue: str | None) -> None:
    """Delete every dead-lettered task of the queue."""
    n = _dead_broker(ctx, queue).dead_purge()
    click.echo(f"purged {n} task(s)")


from taskq.dashboard.cli import dashboard, exporter  # noqa: E402  (needs no extra to import)

cli.add_command(dashboard)
cli.add_command(exporter)

from taskq.rq.cli import rq  # noqa: E402  (rq itself is imported only when a command runs)

cli.add_command(rq)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's own parse errors become one line too (exit 2)."""
    try:
        code = cli.main(args=argv, prog_name="taskq", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx and exc.ctx.parent else (
            " (see 'taskq --help')")
        _usage_error(exc.format_message() + hint)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.Abort:
        click.echo("taskq: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
