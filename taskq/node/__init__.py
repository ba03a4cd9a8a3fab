"""What ``taskq worker`` runs. Never imports :mod:`taskq.client` or :mod:`taskq.compat`.

The node parent (never runs user code):
:mod:`.node` the event loop (claim → dispatch → report, drain, outages), :mod:`.parts`
what it is made of and what a finished job becomes, :mod:`.stopping` how it stops,
:mod:`.holdings`
what it holds under its lease, :mod:`.schedule` when periodic work is due, :mod:`.outage`
which errors mean "back off", :mod:`.control` its control stream (cancel, progress),
:mod:`.scheduler` periodic tasks, :mod:`.telemetry` / :mod:`.metrics` / :mod:`.health`
/ :mod:`.logs` what it tells operators.

The supervised pool, parent side: :mod:`.pool` the processes' lifecycle, :mod:`.spawn`
forking one, :mod:`.dispatch` who gets which job, :mod:`.recycle` when one is replaced,
:mod:`.exits` why one ended.

Inside a pool process: :mod:`.child` the runtime, :mod:`.runner` decode / run / encode,
:mod:`.signed_runner` signed pickled payloads, :mod:`.context` ``taskq.current_task()``.
"""
