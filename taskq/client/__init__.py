"""The producer core. Never imports :mod:`taskq.node`.

:mod:`.client` :class:`Client`, over :mod:`.producer` (what every producer shares: settings,
message building) and :mod:`.calls` (the one decision "by name or signed pickle?", and a
call's options); :mod:`.encode` envelopes to signed bytes; :mod:`.sender` group commit;
:mod:`.replies` the reply listener and the one rule for accepting a reply;
:mod:`.watchdog` tasks Redis lost; :mod:`.batch` batches; :mod:`.scheduled` delayed and
deduplicated calls; :mod:`.cancel` cancelling; :mod:`.tracing` trace context;
:mod:`.aio` :class:`~taskq.client.aio.AsyncClient` on ``redis.asyncio``.
"""

from taskq.client.batch import Batch, BatchStatus
from taskq.client.client import Client

__all__ = ["Batch", "BatchStatus", "Client"]
