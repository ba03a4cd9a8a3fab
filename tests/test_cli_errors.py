"""Bad input: one line on stderr, exit 2 for usage and 1 for failures, never a traceback."""

from __future__ import annotations

import re

import click
import pytest

from taskq.cli import cli, main, parse_arg
from taskq.config import DEFAULTS, Settings, env_queue, env_url

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize("args, code, needle", [
    (["enqueue", "nosuchtask"], 2, "unknown task 'nosuchtask'"),
    (["enqueue", "primes", "abc"], 2, "missing a required argument"),
    (["enqueue", "primes", "abc", "10"], 2, "must be int"),
    (["enqueue", "primes", "1", "2", "3"], 2, "too many positional arguments"),
    (["--url", "http://x", "enqueue", "primes", "0", "10"], 2, "invalid Redis URL"),
    (["--url", "redis://host:notaport/0", "info"], 2, "invalid Redis URL"),
    (["--url", UNREACHABLE, "enqueue", "primes", "0", "10"], 1, "cannot reach Redis"),
    (["--url", UNREACHABLE, "info"], 1, "cannot reach Redis"),
    (["--url", UNREACHABLE, "worker", "--procs", "1"], 1, "cannot reach Redis"),
    (["worker", "--init-args", "{not json"], 2, "--init-args is not valid JSON"),
    (["worker", "--init-args", '{"a": 1}'], 2, "must be a JSON array"),
    (["worker", "--init", "no_such_module:f"], 2, "cannot import"),
    (["worker", "--import", "no_such_module_xyz"], 2, "no module named 'no_such_module_xyz'"),
    (["worker", "--procs", "0"], 2, "procs must be at least 1"),
    (["worker", "--queue", "bad name"], 2, "invalid queue name"),
    (["enqueue", "primes", "0", "10", "--chunk-size", "0"], 2, "--chunk-size"),
    (["dead", "retry"], 2, "give dead-letter IDs or --all"),
    (["nosuchcommand"], 2, "No such command"),
])
def test_bad_input(
    capsys: pytest.CaptureFixture[str], args: list[str], code: int, needle: str
) -> None:
    exit_code, out, err = run(capsys, *args)
    assert exit_code == code, err
    assert err.startswith("taskq: error: ") and err.count("\n") == 1, err  # exactly one line
    assert needle in err, err
    assert out == ""


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "worker", "--help")[0] == 0
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "0.1.0" in out


def test_args_are_json_literals_else_strings() -> None:
    assert parse_arg("10") == 10
    assert parse_arg("[1, 2]") == [1, 2]
    assert parse_arg("a@test.com") == "a@test.com"
    assert parse_arg('"10"') == "10"


def test_help_quotes_the_settings_defaults() -> None:
    worker = cli.commands["worker"]
    quoted = {opt.opts[0]: m.group(1) for opt in worker.params
              if isinstance(opt, click.Option) and (m := re.search(r"\(default ([0-9.]+)", opt.help or ""))}
    fields = {"--batch": "claim_size", "--lease": "lease", "--shutdown-timeout": "shutdown_timeout",
              "--max-deliveries": "max_deliveries", "--hard-timeout-grace": "hard_timeout_grace"}
    assert set(quoted) == set(fields), quoted
    for option, name in fields.items():
        assert float(quoted[option]) == getattr(DEFAULTS, name), option


def test_env_is_read_by_config_over_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TASKQ_URL", "TASKQ_QUEUE", "TASKQ_PROCS", "TASKQ_BATCH", "TASKQ_LEASE",
                "TASKQ_RESULT_TTL", "TASKQ_SECRET"):
        monkeypatch.delenv(var, raising=False)
    assert Settings.from_env() == Settings()
    monkeypatch.setenv("TASKQ_BATCH", "7")
    monkeypatch.setenv("TASKQ_LEASE", "2.5")
    monkeypatch.setenv("TASKQ_QUEUE", "a,b")
    monkeypatch.setenv("TASKQ_URL", "redis://example:1/2")
    monkeypatch.setenv("TASKQ_SECRET", "s3" * 16)
    got = Settings.from_env(lease=9.0, secret=None, url=None)  # None: not given, the env stays
    assert (got.claim_size, got.lease, got.queues, got.url, got.secret) == (
        7, 9.0, ("a", "b"), "redis://example:1/2", b"s3" * 16)
    assert (env_url(), env_queue()) == ("redis://example:1/2", "a")


@pytest.mark.parametrize("env, args, needle", [
    ({"TASKQ_BATCH": "many"}, ["worker"], "TASKQ_BATCH='many' is not a whole number"),
    ({}, ["worker", "--batch", "0"], "claim size (--batch) must be at least 1"),
])
def test_bad_claim_size(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                        env: dict[str, str], args: list[str], needle: str) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    exit_code, _, err = run(capsys, *args)
    assert (exit_code, err.count("\n")) == (2, 1), err
    assert needle in err, err
