"""How a node stops: the graceful-stop protocol, as a small state machine.

running → draining (the first SIGTERM/SIGINT, or :meth:`Stopping.request`): stop
claiming, hand back every claimed task no process has started, let the running ones
finish, until ``shutdown_timeout``; → leaving (a second request, ``force``, or the timeout):
running tasks are killed and handed back too. Either way the node reports what finished
and hands back everything it still holds before it exits (:meth:`Stopping.leave`).
"""

from __future__ import annotations

import logging
import time

from taskq.broker.claim import Claimer
from taskq.node.holdings import Holdings
from taskq.node.pool import SupervisedPool

log = logging.getLogger("taskq.node")

RUNNING, DRAINING, LEAVING = 0, 1, 2
_NAMES = ("running", "draining", "leaving")


class Stopping:
    """Where a node is on its way out, and the steps of getting there."""

    def __init__(self, pool: SupervisedPool, holdings: Holdings, claim: Claimer,
                 shutdown_timeout: float) -> None:
        self.pool, self.holdings, self.claim = pool, holdings, claim
        self.shutdown_timeout = shutdown_timeout
        self.level = RUNNING
        self.deadline = float("inf")  # monotonic: when draining gives up on running tasks
        self._drain_begun = False

    @property
    def name(self) -> str:
        return _NAMES[self.level]

    def request(self, force: bool = False) -> None:
        """Graceful stop; a second request (or ``force``) leaves at once."""
        self.level = LEAVING if force or self.level else DRAINING

    def begin_drain_once(self) -> None:
        """On the first turn after a request: stop claiming and hand back the tasks no
        process has started (the running ones finish)."""
        if self.level == RUNNING or self._drain_begun:
            return
        self._drain_begun = True
        self.claim.drop()
        self.deadline = time.monotonic() + self.shutdown_timeout
        self.holdings.give_back([job.key for job in self.pool.withdraw_queued()])

    def done(self, idle: bool) -> bool:
        """Is the way out complete? (Leaving; or drained; or out of time.)"""
        if self.level == LEAVING:
            return True
        if self.level == DRAINING:
            if time.monotonic() > self.deadline:
                log.warning("shutdown timeout: handing back what is still running")
                return True
            return idle
        return False

    def leave(self, result_ttl: float) -> None:
        """Report what finished, hand back everything still held (in a forced stop or
        after the shutdown timeout, that includes tasks that were running)."""
        self.claim.drop()
        if self.holdings.held:
            self.pool.terminate()
        self.holdings.settle(result_ttl)
