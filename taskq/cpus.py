"""The container-aware CPU count: how many pool processes this machine really has room for.

``os.cpu_count()`` counts the host's CPUs, also inside a CPU-limited container or pod
(python/cpython#80235), so a default of "one process per CPU" over-forks there: 64 pool
processes sharing a 2-CPU quota are throttled in turns and each holds its own memory.
This module owns the answer instead, from what limits the process, smallest first wins:

1. the cgroup CPU quota: v2 ``cpu.max`` ("150000 100000" = 1.5 CPUs) or v1
   ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, of the process's cgroup and every ancestor
   (a limit may sit on a parent slice), rounded *up* (1.5 CPUs -> 2: the half CPU is still
   worth a process) and at least 1;
2. the CPU affinity mask (``os.sched_getaffinity``: taskset, cpusets, pinned containers);
3. ``os.cpu_count()``.

:func:`describe_cpus` also returns the reason, for the line ``taskq worker`` logs.
Nothing here raises: an unreadable or malformed file only means "no limit found there".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

CGROUP_MOUNT = "sys/fs/cgroup"
"""Where cgroups are mounted, relative to the root (every distribution and runtime)."""
V1_CPU_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")
"""v1 mounts the cpu controller under one of these names."""


class CpuChoice(NamedTuple):
    """The number of CPUs to use and why, e.g. ``(2, "cgroup cpu.max 150000/100000 → 2")``."""

    cpus: int
    reason: str


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota, the affinity mask or the host's count."""
    return describe_cpus().cpus


def describe_cpus(root: str | os.PathLike[str] = "/") -> CpuChoice:
    """:func:`available_cpus` with the reason; ``root`` is where ``proc/`` and ``sys/`` are
    read from (tests point it at a fake tree)."""
    host = os.cpu_count() or 1
    choices = [c for c in (_cgroup_quota(Path(root)), _affinity(host)) if c is not None]
    choices.append(CpuChoice(host, f"os.cpu_count() {host}"))
    return min(choices, key=lambda c: c.cpus)  # min() keeps the first of equals: the quota


def _affinity(host: int) -> CpuChoice | None:
    getaffinity = getattr(os, "sched_getaffinity", None)  # Linux only
    if getaffinity is None:
        return None
    try:
        allowed = len(getaffinity(0))
    except OSError:
        return None
    if allowed < 1 or allowed >= host:
        return None  # no restriction: let the fallback say so
    return CpuChoice(allowed, f"CPU affinity {allowed} of {host}")


# -- cgroups ------------------------------------------------------------------------------


def _cgroup_quota(root: Path) -> CpuChoice | None:
    """The tightest CPU quota over the process's cgroup and its ancestors, v2 then v1."""
    v2, v1 = _own_cgroups(root)
    mount = root / CGROUP_MOUNT
    found = []
    if v2 is not None:
        found += [q for d in _lineage(mount, v2) if (q := _read_cpu_max(d)) is not None]
    if not found and v1 is not None:
        for name in V1_CPU_DIRS:
            if (mount / name).is_dir():
                found += [q for d in _lineage(mount / name, v1) if (q := _read_cfs(d)) is not None]
                break
    return min(found, key=lambda c: c.cpus) if found else None


def _own_cgroups(root: Path) -> tuple[str | None, str | None]:
    """The process's cgroup path: the v2 one ("0::/path") and the v1 cpu controller's."""
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return None, None
    v2 = v1 = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _lineage(mount: Path, cgroup: str) -> Iterator[Path]:
    """The cgroup's directory and each ancestor's, up to the mount itself.

    Inside a container with its own cgroup namespace the path is "/" and the mount is the
    container's own cgroup; without one the path names the host's hierarchy, which the
    container's mount may not show, so only the directories that exist are read."""
    parts = [p for p in cgroup.strip().split("/") if p and p not in (".", "..")]
    for depth in range(len(parts), -1, -1):
        directory = mount.joinpath(*parts[:depth])
        if directory.is_dir():
            yield directory


def _read_cpu_max(directory: Path) -> CpuChoice | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" in microseconds, or "max PERIOD" (no limit)."""
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if not fields or fields[0] == "max":
        return None
    quota, period = _positive(fields[0]), _positive(fields[1] if len(fields) > 1 else "100000")
    if quota is None or period is None:
        return None
    count = _round_up(quota, period)
    return CpuChoice(count, f"cgroup cpu.max {quota}/{period} → {count}")


def _read_cfs(directory: Path) -> CpuChoice | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    try:
        quota = _positive((directory / "cpu.cfs_quota_us").read_text().strip())
        period = _positive((directory / "cpu.cfs_period_us").read_text().strip())
    except OSError:
        return None
    if quota is None or period is None:
        return None
    count = _round_up(quota, period)
    return CpuChoice(count, f"cgroup cpu.cfs_quota_us {quota}/{period} → {count}")


def _positive(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _round_up(quota: int, period: int) -> int:
    return max(1, math.ceil(quota / period))
