"""The task registry and producer-side argument checks."""

from __future__ import annotations

import os

import pytest

import taskq
from taskq import registry
from taskq.errors import ConfigError, UnknownTaskError


@taskq.task(name="tests.double", retries=2, timeout=3)
def double(x: int) -> int:
    return 2 * x


def test_decorator_registers_and_returns_the_function() -> None:
    assert double(4) == 8
    spec = registry.get_task("tests.double")
    assert spec.fn is double and spec.retries == 2 and spec.timeout == 3
    assert registry.name_of(double) == "tests.double"


def test_builtins_are_there() -> None:
    assert {"primes", "noop", "echo", "sleep", "fail"} <= set(registry.task_names())
    assert registry.get_task("primes").fn(0, 40_000) == 4203
    assert registry.get_task("primes").fn(0, 50_000) == 5133


def test_unknown_task() -> None:
    with pytest.raises(UnknownTaskError):
        registry.get_task("no.such.task")
    with pytest.raises(UnknownTaskError, match="not a registered task"):
        registry.name_of(lambda: None)


def test_same_name_from_another_function_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        taskq.task(name="tests.double")(lambda x: x)


def test_check_call_counts_and_simple_types() -> None:
    spec = registry.get_task("primes")
    registry.check_call(spec, [0, 10], {})
    with pytest.raises(TypeError, match="missing"):
        registry.check_call(spec, ["abc"], {})
    with pytest.raises(TypeError, match="must be int"):
        registry.check_call(spec, ["abc", 10], {})
    with pytest.raises(TypeError, match="must be int"):
        registry.check_call(spec, [True, 10], {})


def test_retry_backoff_grows_and_is_capped() -> None:
    spec = registry.TaskSpec("x", double, retry_backoff=1.0, retry_backoff_max=5.0)
    assert spec.retry_delay(1, 1.0) == 1.0
    assert spec.retry_delay(3, 1.0) == 4.0
    assert spec.retry_delay(10, 1.0) == 5.0
    assert spec.retry_delay(1, 0.0) == 0.5


def test_resolve_callable_errors_are_one_line() -> None:
    assert registry.resolve_callable("os.path:join") is os.path.join
    assert registry.resolve_callable("os.path.join") is os.path.join  # MODULE.FUNC works too
    with pytest.raises(ConfigError, match="is not callable"):
        registry.resolve_callable("os:sep")
    with pytest.raises(ConfigError, match="cannot import"):
        registry.resolve_callable("no_such_mod:f")
    with pytest.raises(ConfigError, match="no attribute"):
        registry.resolve_callable("os:no_such_fn")
