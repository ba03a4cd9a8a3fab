"""Local mode: an embedded Redis (:mod:`.embedded`) and a local node (:mod:`.cluster`), so
taskq runs after ``pip install`` with no Redis installed."""
