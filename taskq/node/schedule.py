"""When the node loop does its periodic work (renew, reclaim, promote, heartbeat), on
``time.monotonic()``, in float seconds.

Kept apart from the loop so the loop's timing is visible and settable: a test makes the
reclaim due now instead of waiting half a lease for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

PERIODIC = ("renew", "reclaim", "promote", "heartbeat")


class Schedule:
    """Due times of the node's periodic work (``PERIODIC``); all due at first."""

    def __init__(self, names: Iterable[str] = PERIODIC) -> None:
        now = time.monotonic()
        self._due = dict.fromkeys(names, now)

    def is_due(self, name: str, now: float) -> bool:
        return now >= self._due[name]

    def due_at(self, name: str) -> float:
        return self._due[name]

    def set(self, name: str, at: float) -> None:
        self._due[name] = at

    def not_before(self, name: str, at: float) -> None:
        """Push ``name`` back to ``at`` unless it is due later anyway."""
        self._due[name] = max(self._due[name], at)

    def make_due(self, *names: str) -> None:
        """Due now: run at the next turn of the loop (all of them with no names)."""
        for name in names or tuple(self._due):
            self._due[name] = 0.0

    def next(self) -> float:
        """The earliest due time."""
        return min(self._due.values())
