"""Where the inference service's threads run: the batch thread on a CPU of its own.

With one intra-op thread the model calls of the batch thread are the service's throughput.
Left to the scheduler, the request threads a finished batch wakes are placed on the CPU of the
thread that woke them (the batch thread's) and preempt it while another CPU idles; the
server's model call per row was slower than the same call in-process (docs/BENCHMARKS.md,
"Serving"). Pinned, the batch thread keeps one CPU and every other thread (gRPC and REST
request threads, the drift monitor, the version watcher) shares the rest.

Pinning is only safe when the CPUs are the process's own. `auto` pins when the process may
run on at least two CPUs, the model uses one thread, and the cgroup's CPU quota (if any) is no
smaller than the CPU set, e.g. a Kubernetes pod with whole CPUs under the static CPU manager
policy, or a VM. On a shared node, where a pod's quota is smaller than the node's CPU set, a
pinned thread could wait for a CPU that other pods use while another one idles: no pinning.

Hand-written: `os.sched_setaffinity` does the pinning; no library reads the cgroup quota.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)
CpuPinning = Literal["auto", "off"]
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuPlan:
    """model: the batch thread's CPUs; others: every other thread's."""

    model: frozenset[int]
    others: frozenset[int]


def plan_cpus(mode: CpuPinning, threads: int) -> CpuPlan | None:
    """This process's plan for `threads` intra-op threads, or None (the scheduler places every
    thread): `plan_for` on its CPU set and its cgroup's quota."""
    if mode == "off" or not hasattr(os, "sched_getaffinity"):  # (not Linux: no affinity)
        return None
    return plan_for(mode, threads, set(os.sched_getaffinity(0)), cgroup_cpu_quota())


def plan_for(
    mode: CpuPinning, threads: int, available: set[int], quota: float | None
) -> CpuPlan | None:
    """The plan for `threads` intra-op threads on the CPUs `available` under a CPU `quota`
    (in CPUs; None: no quota), or None (the scheduler places every thread)."""
    if mode == "off" or threads != 1 or len(available) < 2:
        return None
    if quota is not None and quota < len(available):
        return None
    model = max(available)  # the last CPU: the first ones tend to take the device interrupts
    return CpuPlan(frozenset({model}), frozenset(available - {model}))


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or
    None when there is none or it cannot be read."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota_us < 0 else quota_us / period_us
    except (OSError, ValueError):
        log.warning("the cgroup CPU quota could not be read; treated as none", exc_info=True)
    return None


def pin_current_thread(cpus: frozenset[int]) -> None:
    """Run the calling thread (and the threads it starts from now on) on `cpus` only."""
    os.sched_setaffinity(0, cpus)  # on Linux, pid 0 is the calling thread


def pin_process(cpus: frozenset[int]) -> None:
    """Run every thread of this process (some start at import) and every later one on `cpus`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def describe(plan: CpuPlan | None) -> dict[str, object]:
    """The plan as log fields."""
    if plan is None:
        return {"cpu_pinning": "none"}
    return {
        "cpu_pinning": "batch thread pinned",
        "model_cpus": sorted(plan.model),
        "other_cpus": sorted(plan.others),
    }
