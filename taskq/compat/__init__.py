"""The stdlib look-alikes over a :class:`~taskq.Client`: ``Executor``
(:mod:`.futures`), ``Pool`` (:mod:`.pool`), ``Process`` and ``cpu_count``
(:mod:`.process`), ``Value`` and ``Lock`` (:mod:`.shared`, with their lock scripts)."""
