"""The producer core: :class:`~.client.Client` and :class:`~.client.Batch`, the
group-commit sender, and the reply listener. Never imports :mod:`taskq.node`."""

from taskq.client.client import Batch, BatchStatus, Client

__all__ = ["Batch", "BatchStatus", "Client"]
