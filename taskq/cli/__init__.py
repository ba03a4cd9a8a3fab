"""The ``taskq`` command: the click group, its entry point, and the registration of every
subcommand. The commands themselves live in :mod:`.run` (enqueue, run, result, cancel),
:mod:`.worker` and :mod:`.inspect` (info, dead); what they share (one-line errors, --url,
value parsing) in :mod:`.common`. A command's module is imported only when that command
is looked up (:class:`LazyCommands`), so ``taskq worker`` starts without the producer side.

Exit codes: 0 ok, 1 a task or Redis failed, 2 usage error. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence

import click

from taskq.cli.common import (
    fail,
    friendly_errors,
    import_modules,
    parse_arg,
    parse_duration,
    url_option,
    usage_error,
)

__all__ = ["cli", "friendly_errors", "import_modules", "main", "parse_arg", "parse_duration"]

COMMANDS = {
    "enqueue": ("taskq.cli.run", "enqueue"),
    "run": ("taskq.cli.run", "run"),
    "result": ("taskq.cli.run", "result"),
    "cancel": ("taskq.cli.run", "cancel"),
    "worker": ("taskq.cli.worker", "worker"),
    "info": ("taskq.cli.inspect", "info"),
    "dead": ("taskq.cli.inspect", "dead"),
    "dashboard": ("taskq.dashboard.cli", "dashboard"),  # needs no extra to import
    "exporter": ("taskq.dashboard.cli", "exporter"),
    "rq": ("taskq.rq.cli", "rq"),  # rq itself is imported only when a command runs
}
"""Every subcommand: its name → (module, attribute)."""


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands, each module imported when its command is first looked up.

    ``taskq worker`` then loads the worker's module only, not the producer side
    (:mod:`taskq.cli.run` imports the Client), the dashboard or rq's commands;
    ``taskq --help`` (which lists them all) still loads every one. Click asks the group
    for its commands through this mapping (``commands.get(name)``, ``sorted(commands)``).
    """

    def __init__(self, where: dict[str, tuple[str, str]]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, attr = self._where[name]  # KeyError: no such command
            command: click.Command = getattr(importlib.import_module(module), attr)
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._where.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._where and name not in self._loaded:
            raise KeyError(name)
        self._where.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**self._where, **self._loaded})

    def __len__(self) -> int:
        return len({**self._where, **self._loaded})


@click.group(commands=LazyCommands(COMMANDS),
             context_settings={"help_option_names": ["-h", "--help"]})
@url_option
@click.version_option(package_name="taskq")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """taskq: CPU tasks over Redis, claimed in bulk by worker nodes."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url


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
