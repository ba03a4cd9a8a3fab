"""``taskq dashboard`` and ``taskq exporter``: the live web dashboard and the cluster's
queue-level Prometheus metrics (the optional extra ``taskq[dashboard]``).

- :mod:`.sampler`  one sampler per process: a snapshot a second, fanned out to every page
- :mod:`.metrics`  the snapshot as Prometheus metrics
- :mod:`.app`      the Starlette application (page, API, actions, /metrics, /healthz)
- :mod:`.auth`     Basic/bearer auth, security headers, the CSRF rule for actions
- :mod:`.page`     the HTML shell; ``static/`` its one script and stylesheet
- :mod:`.cli`      the two click commands (importable without the extra installed)

Every Redis read goes through :mod:`taskq.broker.snapshot`.
"""
