"""Local mode: an embedded Redis (:mod:`.embedded`) and a local node (:mod:`.cluster`), so
taskq runs after ``pip install`` with no Redis installed; :mod:`.lifetime` owns what
happens to them (and to the work they serve) at interpreter exit."""
