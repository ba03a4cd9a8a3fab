"""The ``taskq`` command: the click group, its entry point, and the registration of every
subcommand. The commands themselves live in :mod:`.run` (enqueue, run, result, cancel),
:mod:`.worker` and :mod:`.inspect` (info, dead); what they share (one-line errors, --url,
value parsing) in :mod:`.common`.

Exit codes: 0 ok, 1 a task or Redis failed, 2 usage error. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from taskq.cli import inspect, run, worker
from taskq.cli.common import (
    fail,
    friendly_errors,
    import_modules,
    parse_arg,
    parse_duration,
    url_option,
    usage_error,
)
from taskq.dashboard.cli import dashboard, exporter  # needs no extra to import
from taskq.rq.cli import rq  # rq itself is imported only when a command runs

__all__ = ["cli", "friendly_errors", "import_modules", "main", "parse_arg", "parse_duration"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@url_option
@click.version_option(package_name="taskq")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """taskq: CPU tasks over Redis, claimed in bulk by worker nodes."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url


for _command in (run.enqueue, run.run, run.result, run.cancel, worker.worker, inspect.info,
                 inspect.dead, dashboard, exporter, rq):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's own parse errors become one line too (exit 2)."""
    try:
        code = cli.main(args=argv, prog_name="taskq", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx and exc.ctx.parent else (
            " (see 'taskq --help')")
        usage_error(exc.format_message() + hint)
    except click.ClickException as exc:
        fail(exc.format_message())
    except click.Abort:
        click.echo("taskq: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
