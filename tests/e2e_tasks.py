"""Tasks and an initializer that worker subprocesses import in the end-to-end tests."""

from __future__ import annotations

import os

import taskq

CONFIG: dict[str, object] = {}


def init_worker(multiplier: int, label: str) -> None:
    """The --init initializer: per-process config, like multiprocessing's initializer."""
    CONFIG["multiplier"] = multiplier
    CONFIG["label"] = label
    CONFIG["pid"] = os.getpid()


@taskq.task(name="e2e.scale")
def scale(x: int) -> list[object]:
    return [x * int(CONFIG["multiplier"]), CONFIG["label"], CONFIG["pid"] == os.getpid()]


@taskq.task(name="e2e.divide")
def divide(a: float, b: float) -> float:
    return a / b
