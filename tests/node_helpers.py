"""Helpers for in-process node tests (a Node on fakeredis, stepped by the test)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import redis as redis_lib

from taskq.broker import Broker
from taskq.message import TaskMessage
from taskq.node.node import Node


def enqueue(r: redis_lib.Redis, task: str, *args: Any, reply_to: str | None = None) -> str:
    """Queue one task on ``default``; its task id."""
    task_id = uuid.uuid4().hex
    body = TaskMessage(task_id, task, list(args), reply_to=reply_to).encode()
    Broker(r, "default").enqueue([(body, None)])
    return task_id


def step_until(node: Node, cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Turn the node's loop until ``cond()`` holds (bounded: fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        node.step(0.05)
