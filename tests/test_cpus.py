"""taskq.cpus: the container-aware CPU count, on fake cgroup file trees.

Each tree is laid out under tmp_path as the kernel shows it (``proc/self/cgroup``,
``sys/fs/cgroup/...``); ``os.cpu_count`` and ``os.sched_getaffinity`` are replaced so the
host these tests run on cannot change the answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskq import cpus
from taskq.cpus import CpuChoice, describe_cpus


@pytest.fixture(autouse=True)
def host_of_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8-CPU host whose affinity mask allows all 8."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def v2_tree(root: Path, cpu_max: str | None, cgroup: str = "/") -> Path:
    """A cgroup v2 tree: the process in ``cgroup``, whose cpu.max holds ``cpu_max``."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"0::{cgroup}\n")
    own = root / "sys/fs/cgroup" / cgroup.strip("/")
    own.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (own / "cpu.max").write_text(cpu_max + "\n")
    return own


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000", CpuChoice(8, "os.cpu_count() 8")),
    ("150000 100000", CpuChoice(2, "cgroup cpu.max 150000/100000 → 2")),
    ("50000 100000", CpuChoice(1, "cgroup cpu.max 50000/100000 → 1")),
    ("200000 100000", CpuChoice(2, "cgroup cpu.max 200000/100000 → 2")),
    ("1000 100000", CpuChoice(1, "cgroup cpu.max 1000/100000 → 1")),  # at least 1
])
def test_cgroup_v2_cpu_max_rounds_up(tmp_path: Path, cpu_max: str, expected: CpuChoice) -> None:
    v2_tree(tmp_path, cpu_max)
    assert describe_cpus(tmp_path) == expected


def test_a_quota_above_the_host_still_gives_the_host_count(tmp_path: Path) -> None:
    v2_tree(tmp_path, "1600000 100000")  # 16 CPUs of quota on an 8-CPU host
    assert describe_cpus(tmp_path) == CpuChoice(8, "os.cpu_count() 8")


def test_a_limit_on_a_parent_cgroup_applies(tmp_path: Path) -> None:
    # kubepods-style: the pod's slice carries the quota, the container's own cgroup none.
    own = v2_tree(tmp_path, "max 100000", cgroup="/kubepods.slice/pod1/ctr")
    (own.parent / "cpu.max").write_text("300000 100000\n")
    (own.parent.parent / "cpu.max").write_text("max 100000\n")
    assert describe_cpus(tmp_path) == CpuChoice(3, "cgroup cpu.max 300000/100000 → 3")


def test_cgroup_path_missing_from_the_mount_reads_the_mount_root(tmp_path: Path) -> None:
    # No cgroup namespace: /proc/self/cgroup names the host's path, the mount shows only ours.
    v2_tree(tmp_path, "250000 100000")
    (tmp_path / "proc/self/cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    assert describe_cpus(tmp_path).cpus == 3


@pytest.mark.parametrize("garbage", ["", "lots 100000", "-5 100000", "150000 0", "150000 x"])
def test_malformed_cpu_max_is_no_limit(tmp_path: Path, garbage: str) -> None:
    v2_tree(tmp_path, garbage)
    assert describe_cpus(tmp_path) == CpuChoice(8, "os.cpu_count() 8")


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    cpu = tmp_path / "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert describe_cpus(tmp_path) == CpuChoice(3, "cgroup cpu.cfs_quota_us 250000/100000 → 3")
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert describe_cpus(tmp_path) == CpuChoice(8, "os.cpu_count() 8")


def test_affinity_narrower_than_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2_tree(tmp_path, "max 100000")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 4, 6})
    assert describe_cpus(tmp_path) == CpuChoice(4, "CPU affinity 4 of 8")


def test_the_smallest_limit_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2_tree(tmp_path, "600000 100000")  # quota 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})  # affinity 4
    assert describe_cpus(tmp_path) == CpuChoice(4, "CPU affinity 4 of 8")
    (tmp_path / "sys/fs/cgroup/cpu.max").write_text("150000 100000\n")  # quota 2
    assert describe_cpus(tmp_path) == CpuChoice(2, "cgroup cpu.max 150000/100000 → 2")


def test_no_cgroup_files_no_affinity_falls_back_to_cpu_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    assert describe_cpus(tmp_path) == CpuChoice(8, "os.cpu_count() 8")
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert describe_cpus(tmp_path) == CpuChoice(1, "os.cpu_count() 1")


def test_available_cpus_reads_the_real_root(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(cpus, "describe_cpus", lambda root="/": seen.append(root) or CpuChoice(5, "x"))
    assert cpus.available_cpus() == 5
    assert seen == ["/"]


def test_this_machines_real_files_parse() -> None:
    # The real /proc and /sys/fs/cgroup of the test machine (the host count is still faked).
    choice = describe_cpus()
    assert 1 <= choice.cpus <= 8 and choice.reason
