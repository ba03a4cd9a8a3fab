"""``taskq rq …``: the commands for teams coming from rq (``taskq rq import``).

Parse, call :mod:`taskq.rq.importer`, print. rq is imported only when a command runs,
so ``taskq`` starts without it; its absence is a one-line error.
"""

from __future__ import annotations

from typing import Any

import click
import redis


@click.group("rq")
def rq() -> None:
    """Coming from rq: move the jobs waiting in rq queues onto taskq."""


@rq.command("import")
@click.option("--rq-url", default=None, metavar="URL",
              help="The rq Redis (default: taskq's --url).")
@click.option("--queue", "-q", "queues", multiple=True, metavar="NAME",
              help="An rq queue to move (repeatable; default: every rq queue).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import a module of taskq tasks (repeatable): only jobs of registered tasks move.")
@click.option("--dry-run", is_flag=True, help="Print what would move; change nothing.")
@click.pass_context
def import_(ctx: click.Context, rq_url: str | None, queues: tuple[str, ...],
            imports: tuple[str, ...], dry_run: bool) -> None:
    """Move rq jobs (JSON payload, registered task) onto the taskq queues of the same
    names. Pickled jobs and unknown functions stay in rq, reported with the reason.
    Safe to interrupt and rerun: every job moves exactly once. Stop the rq workers first."""
    from taskq.cli import friendly_errors

    friendly_errors(_import)(ctx, rq_url, queues, imports, dry_run)


def _import(ctx: click.Context, rq_url: str | None, queues: tuple[str, ...],
            imports: tuple[str, ...], dry_run: bool) -> None:
    from taskq.broker import connect, unreachable
    from taskq.cli import import_modules
    from taskq.config import Settings
    from taskq.rq import importer

    import_modules(imports)
    settings = Settings.from_env(url=ctx.find_root().obj.get("url"))
    rq_conn = connect(rq_url or settings.url, socket_connect_timeout=5.0, socket_timeout=30.0)
    taskq_conn = connect(settings.url, socket_connect_timeout=5.0, socket_timeout=30.0)
    verb = {"moved": "would move" if dry_run else "moved", "already": "already", "left": "left"}

    def say(kind: str, job_id: str, detail: str) -> None:
        if kind == "already":
            detail = "queued on taskq by an earlier run; removed from rq"
        click.echo(f"{verb[kind]:<11} {job_id}  {detail}")

    try:
        names = list(queues) or importer.rq_queue_names(rq_conn)
        _warn_about_workers(rq_conn, names)
        report = importer.import_queues(rq_conn, taskq_conn, names, dry_run=dry_run,
                                        secret=settings.secret, on_job=say)
    except redis.RedisError as exc:
        raise unreachable(rq_url or settings.url, exc) from None
    what = "would move" if dry_run else "moved"
    click.echo(f"taskq rq import: {what} {len(report.moved)} job(s) from {len(names)} queue(s), "
               f"{len(report.already)} already moved, {len(report.left)} left in rq")


def _warn_about_workers(rq_conn: Any, names: list[str]) -> None:
    """rq workers still running may take a job between its taskq write and its rq removal."""
    from taskq.rq.importer import require_rq

    rq_lib = require_rq()
    busy = [n for n in names if rq_lib.Worker.count(queue=rq_lib.Queue(n, connection=rq_conn))]
    if busy:
        click.echo(f"taskq: warning: rq workers are serving {', '.join(busy)}: a job they take "
                   "during the import may run twice (stop them first)", err=True)
