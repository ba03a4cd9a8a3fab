"""The stdlib look-alikes over a :class:`~taskq.Client`: ``Executor``
(:mod:`.futures`), ``Pool`` (:mod:`.pool`), ``Process`` and ``cpu_count``
(:mod:`.process`), ``Value`` and ``Lock`` (:mod:`.shared`, over the per-process lease
protocol of :mod:`.leases` and the lock scripts in ``lua/``); :mod:`.backend` is what they
all stand on (a Client, maybe a local cluster, the pickling context, chunk sizing)."""
