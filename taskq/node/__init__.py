"""What ``taskq worker`` runs: the node loop (:mod:`.node`), the supervised pool
(:mod:`.pool`), the child runtime (:mod:`.child`) and the task runner (:mod:`.runner`).

Never imports :mod:`taskq.client` or :mod:`taskq.compat`."""
