"""The producer core: :class:`~.client.Client` and :class:`~.batch.Batch`, the
group-commit sender, and the reply listener. Never imports :mod:`taskq.node`."""

from taskq.client.batch import Batch, BatchStatus
from taskq.client.client import Client

__all__ = ["Batch", "BatchStatus", "Client"]
