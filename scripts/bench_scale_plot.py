"""The PNG of scripts/bench_scale.py: six panels drawn from its ``Report.data``.

Kept apart so the benchmark itself runs (``--no-plot``) where matplotlib is not
installed; matplotlib comes with the ``bench`` extra.
"""

from __future__ import annotations

import os
from typing import Any


def _backlog(ax: Any, b: list[tuple[int, float, float, float]]) -> None:
    x = [max(p[0], 1) for p in b]  # a log axis has no 0
    ax.plot(x, [p[1] for p in b], "o-", label="enqueue (send_many)")
    ax.plot(x, [p[2] for p in b], "s-", label="claim (XREADGROUP)")
    ax.set(xscale="log", title="Backlog: rates vs tasks waiting",
           xlabel="tasks waiting (0 shown at 1)", ylabel="tasks/s", ylim=(0, None))
    mem = [(p[0], p[3]) for p in b if p[0]]
    twin = ax.twinx()
    twin.plot([m[0] for m in mem], [m[1] for m in mem], "^--", color="grey",
              label="B per waiting task")
    twin.set(ylabel="Redis bytes per waiting task",
             ylim=(0, max([m[1] for m in mem] + [1]) * 1.5))
    ax.legend(loc="center left", fontsize=8)
    twin.legend(loc="center right", fontsize=8)


def _pending(ax: Any, p: list[tuple[int, float, float, float]]) -> None:
    ax.bar([i - 0.2 for i in range(len(p))], [q[2] for q in p], 0.4, label="renew.lua")
    ax.bar([i + 0.2 for i in range(len(p))], [q[3] for q in p], 0.4, label="reclaim.lua")
    ax.set(xticks=range(len(p)), xticklabels=[f"{q[0]:,} pending\n{q[1]:,.0f} completions/s"
                                              for q in p],
           yscale="log", ylabel="ms per call", title="Pending list: script time per call")
    ax.legend(fontsize=8)


def _nodes(ax: Any, cost: Any, n: list[tuple[int, float, float, float, float, float]]) -> None:
    cores = os.cpu_count() or 1
    ax.plot([q[0] for q in n], [q[2] for q in n], "o-", label="no-op submits (tasks/s)")
    ax.set(xticks=[q[0] for q in n], xlabel="nodes (1 process each)", ylabel="no-op tasks/s",
           title=f"Nodes: throughput ({cores} cores)", ylim=(0, None))
    if n[-1][0] > cores:  # past the core count a CPU-bound node only takes turns
        ax.axvspan(cores, n[-1][0], color="grey", alpha=0.12, label="more nodes than cores")
    cpu = ax.twinx()
    cpu.plot([q[0] for q in n], [q[1] for q in n], "s--", color="C1", label="primes chunks/s")
    cpu.set(ylabel="primes chunks/s", ylim=(0, None))
    ax.legend(loc="lower left", fontsize=8)
    cpu.legend(loc="lower right", fontsize=8)
    cost.bar([str(q[0]) for q in n], [q[3] for q in n], color="C2")
    cost.set(xlabel="nodes", ylabel="Redis commands per no-op task",
             title="Nodes: Redis cost per task")
    for i, q in enumerate(n):
        cost.annotate(f"{q[4]:,.0f} B\nper task\n\n{q[5]:.1f} cmd/s\nper idle\nnode",
                      (i, q[3] / 2), ha="center", va="center", fontsize=8)


def _results(ax: Any, r: dict[str, Any]) -> None:
    ax.plot([t for t, _ in r["timeline"]], [(m - r["base"]) / 2**20 for _, m in r["timeline"]],
            ".-")
    ax.axvline(r["ttl"], color="grey", ls=":", label=f"result TTL {r['ttl']:g} s")
    ax.set(xlabel="s since first submit", ylabel="used_memory above before (MiB)",
           title="Results kept: the TTL sweep", ylim=(0, None))
    ax.legend(fontsize=8)


def plot(data: dict[str, Any], path: str, title: str) -> None:
    """Draw every section of ``data`` into the PNG at ``path``, ``title`` on top."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 9))
    fig.suptitle(title, fontsize=9)
    _backlog(ax[0, 0], data["backlog"])
    _pending(ax[0, 1], data["pending"])
    _nodes(ax[0, 2], ax[1, 0], data["nodes"])
    pl = data["payload"]
    ax[1, 1].plot([q[0] for q in pl], [q[1] for q in pl], "o-")
    ax[1, 1].set(xscale="log", yscale="log", xlabel="argument bytes", ylabel="tasks/s",
                 title="Payload size: submit throughput")
    _results(ax[1, 2], data["results"])
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
