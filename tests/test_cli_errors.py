"""Bad input: one line on stderr, exit 2 for usage and 1 for failures, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import click
import pytest
import redis as redis_lib

from taskq.cli import cli, main, parse_arg
from taskq.config import DEFAULTS, Settings, env_queue, env_url

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture(autouse=True)
def _never_the_default_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests run the CLI in process with bad input, expecting it to stop before it
    connects: should one ever get further, it must not reach a Redis that happens to run
    on the default localhost:6379 (a shared server on development machines)."""
    if not os.environ.get("TASKQ_URL"):
        monkeypatch.setenv("TASKQ_URL", UNREACHABLE)


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


# -- hardening (issue 9): the CLI as documented, bad input in one line -------------------


@pytest.mark.parametrize("args, code, needle", [
    (["enqueue", "primes", "0", "100000000000"], 2, "at most 100000 are sent at once"),
    (["enqueue", "primes", "0", "10", "--timeout", "0"], 2, "--timeout"),
    (["enqueue", "primes", "0", "10", "--timeout", "-1"], 2, "--timeout"),
    (["enqueue", "primes", "--bogus", "5"], 2, "No such option '--bogus'"),
    (["worker", "--max-memory-per-child", "0"], 2, "--max-memory-per-child"),
    (["worker", "--shutdown-timeout", "-1"], 2, "--shutdown-timeout"),
    (["worker", "--max-tasks-per-child", "0"], 2, "--max-tasks-per-child"),
    (["worker", "--init-args", "[1]"], 2, "--init-args needs --init"),
    (["--url", "redis://host/abc", "info"], 2, "invalid Redis URL"),
    (["info", "--url", "redis://host/abc"], 2, "invalid Redis URL"),
    (["enqueue", "primes", "0", "10", "--url", UNREACHABLE], 1, "cannot reach Redis"),
    (["worker", "--url", UNREACHABLE, "--procs", "1"], 1, "cannot reach Redis"),
    (["result", "x", "--url", UNREACHABLE], 1, "cannot reach Redis"),
    (["dead", "list", "--url", UNREACHABLE], 1, "cannot reach Redis"),
    (["dead", "list", "--bogus"], 2, "(see 'taskq dead list --help')"),
    (["--url", "redis://app:PASSWORD@127.0.0.1:1/0", "info"], 1, "redis://app:***@127.0.0.1"),
])
def test_bad_input_hardening(
    capsys: pytest.CaptureFixture[str], args: list[str], code: int, needle: str
) -> None:
    exit_code, _, err = run(capsys, *args)
    assert exit_code == code, err
    assert err.startswith("taskq: error: ") and err.count("\n") == 1, err
    assert needle in err and "PASSWORD" not in err, err


def test_url_after_the_subcommand_wins_over_the_one_before(
        capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    code, out, err = run(capsys, "--url", UNREACHABLE, "enqueue", "primes", "-5", "5",
                         "--no-wait", "--url", redis_url)
    assert code == 0, err  # -5 is a number, not an option; the second --url was used
    batch_id = out.strip()
    assert batch_id and redis_lib.Redis.from_url(redis_url).exists(
        f"taskq:{{default}}:batch:{batch_id}")


def test_dead_retry_of_a_bad_or_unknown_id_is_one_line(
        capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    code, _, err = run(capsys, "dead", "retry", "nosuchid", "--url", redis_url)
    assert (code, err.count("\n")) == (2, 1) and "is not a dead-letter id" in err, err
    code, out, err = run(capsys, "dead", "retry", "0-0", "--url", redis_url)
    assert (code, err.count("\n"), out) == (1, 1, ""), err
    assert "no dead letter with that id" in err


def test_dead_list_shows_task_id_name_time_reason_and_error(
        capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    body = json.dumps({"id": "abc.7", "t": "primes", "a": [0, 10]}).encode()
    error = json.dumps({"id": "abc.7", "ok": False, "e": ["ValueError", "bad\ninput", "tb"]})
    dead_id = r.xadd("taskq:{default}:dead", {"entry": "1-0", "packed": b"1||" + body,
                                              "reason": "poison", "error": error})
    code, out, err = run(capsys, "dead", "list", "--url", redis_url)
    assert code == 0, err
    (row,) = out.splitlines()  # no header: the first column feeds `taskq dead retry`
    assert row.split()[0] == dead_id.decode()
    when = time.strftime("%Y-%m-%d", time.gmtime(int(dead_id.decode().split("-")[0]) / 1000))
    for cell in (dead_id.decode(), "abc.7", "primes", when, "poison", "ValueError: bad input"):
        assert cell in row, row


def test_enqueue_says_no_node_serves_the_queue_and_ctrl_c_says_how_to_fetch(
        capsys: pytest.CaptureFixture[str], redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, "enqueue", "primes", "0", "10", "--timeout", "1.5",
                       "--url", redis_url)
    assert code == 1 and "no live node serves queue 'default'; waiting" in err, err
    assert err.count("no live node") == 1 and "timed out" in err

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("taskq.cli.run.wait", interrupted)
    code, _, err = run(capsys, "enqueue", "primes", "0", "10", "--url", redis_url)
    assert code == 130, err
    batch_id = re.search(r"batch (\w+) goes on: `taskq result (\w+)` later", err)
    assert batch_id and batch_id.group(1) == batch_id.group(2), err


@pytest.mark.timeout(60)
def test_worker_logs_how_many_processes_it_chose_and_why(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    done = subprocess.run([sys.executable, "-m", "taskq", "worker", "--burst", "--url", redis_url],
                          capture_output=True, text=True, env=env, timeout=50)
    assert done.returncode == 0, done.stderr
    assert re.search(r"using \d+ processes: .*(cpu|affinity|cgroup).*--procs", done.stderr), \
        done.stderr
