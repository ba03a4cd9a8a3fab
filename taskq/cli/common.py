"""What every ``taskq`` command shares: the one-line error handling and exit codes, the
``--url`` option (before or after the subcommand), ARGS that may be negative numbers, and
the parsing of CLI values (``parse_arg``, ``parse_duration``) and of ``--import``.

Exit codes: 0 ok, 1 a task or Redis failed, 2 usage error, 130 interrupted. Errors are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
import redis

from taskq import registry
from taskq.broker import REDIS_DOWN, unreachable
from taskq.config import DEFAULTS, Settings
from taskq.errors import BrokerError, ConfigError, TaskError, TaskqError, UnknownTaskError

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
            usage_error(str(exc))
        except TaskError as exc:
            fail(f"task failed: {exc}")
        except (Failure, BrokerError, TaskqError) as exc:
            fail(str(exc))
        except REDIS_DOWN as exc:
            fail(str(unreachable(_current_url(), exc)))
        except redis.RedisError as exc:
            fail(f"Redis error: {exc}")
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


def fail(message: str) -> NoReturn:
    click.echo(f"taskq: error: {message}", err=True)
    sys.exit(1)


def usage_error(message: str) -> NoReturn:
    click.echo(f"taskq: error: {message}", err=True)
    sys.exit(2)


def parse_arg(text: str) -> Any:
    """A CLI argument is a JSON literal where it parses (``10``, ``[1,2]``), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


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


def default(name: str) -> str:
    """A Settings default as the help texts quote it: written once, in config.py."""
    value = getattr(DEFAULTS, name)
    if isinstance(value, tuple):
        value = ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_for(ctx: click.Context, **overrides: Any) -> Settings:
    """The command's Settings: env and defaults, the --url given, then ``overrides``."""
    return Settings.from_env(url=ctx.obj["url"], **overrides)


POSITIVE = click.FloatRange(min=0, min_open=True)

url_option = click.option(
    "--url", envvar="TASKQ_URL", default=None,
    help=f"Redis URL (default {default('url')}; env TASKQ_URL).",
)


def _store_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:  # given after the subcommand: it wins over the group's
        ctx.find_root().ensure_object(dict)["url"] = value


def global_options(fn: F) -> F:
    """The group's options, accepted after the subcommand too (``taskq worker --url U``,
    as rq and celery users type it)."""
    return click.option(
        "--url", default=None, expose_value=False, is_eager=True, callback=_store_url,
        help=f"Redis URL (default {default('url')}; env TASKQ_URL).")(fn)


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
