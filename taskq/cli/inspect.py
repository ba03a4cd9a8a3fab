"""``taskq info`` and ``taskq dead list|retry|purge``: look at the queues, the live nodes
and the dead letters, and retry or purge those. Only ``dead retry`` and ``dead purge``
write to Redis.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from typing import Any

import click
import redis

from taskq.broker import Broker, connect, unreachable
from taskq.cli.common import Failure, friendly_errors, global_options, settings_for
from taskq.errors import ConfigError
from taskq.message import Entry


@click.command()
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
    settings = settings_for(ctx, queues=queues or None)  # validates the names
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


@click.group()
def dead() -> None:
    """Inspect, retry or purge dead-lettered tasks."""


def _dead_broker(ctx: click.Context, queue: str | None) -> Broker:
    settings = settings_for(ctx.find_root(), queues=(queue,) if queue else None)
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
