"""A batch seen from its producer: :class:`Batch` (many tasks counted together, in
``taskq:{q}:batch:<id>``) and its counts, :class:`BatchStatus`. The counts are kept by
the completion script; this module only reads them and waits for them to move."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskq.client.client import Client


@dataclass(frozen=True)
class BatchStatus:
    total: int
    done: int
    failed: int
    cancelled: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def complete(self) -> bool:
        return self.finished >= self.total


class Batch:
    """Many tasks counted together; ``wait()`` blocks until every one has finished."""

    def __init__(self, client: Client, batch_id: str, total: int) -> None:
        self.client, self.id, self.total = client, batch_id, total

    def status(self) -> BatchStatus:
        raw = self.client.broker.batch_status(self.id)
        total = int(raw.get("total", self.total))
        return BatchStatus(total, int(raw.get("done", 0)), int(raw.get("failed", 0)),
                           int(raw.get("cancelled", 0)))

    def wait(
        self, timeout: float | None = None, progress: Callable[[BatchStatus], None] | None = None
    ) -> BatchStatus:
        """Block until the batch is complete; ``progress`` is called as counts move."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if progress is not None:
                progress(status)
            if status.complete:
                return status
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"batch {self.id}: {status.finished}/{status.total} finished")
            self.client.broker.wait_batch_event(self.id, left)
