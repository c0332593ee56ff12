"""CPU pinning: the plan (when the batch thread gets a CPU of its own), the cgroup quota it
reads, and what a started inference process does with it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perennial_dev.launch import start_inference
from services.inference.cpus import CpuPlan, cgroup_cpu_quota, plan_cpus, plan_for
from tests.helpers import wait_for


def test_one_thread_on_cpus_of_its_own_gets_the_last_cpu_and_the_rest_get_the_others() -> None:
    plan = plan_for("auto", 1, available={0, 1, 2, 3}, quota=None)
    assert plan == CpuPlan(frozenset({3}), frozenset({0, 1, 2}))
    assert plan_for("auto", 1, available={4, 5}, quota=2.0) == CpuPlan(
        frozenset({5}), frozenset({4})
    )


@pytest.mark.parametrize(
    ("mode", "threads", "available", "quota"),
    [
        ("off", 1, {0, 1}, None),  # switched off
        ("auto", 2, {0, 1}, None),  # the model's intra-op threads would need the other CPU
        ("auto", 0, {0, 1}, None),  # torch's default: a thread per core
        ("auto", 1, {0}, None),  # nothing left for the request threads
        ("auto", 1, set(range(64)), 2.0),  # a shared node: the quota is smaller than the set
    ],
)
def test_no_pinning_where_it_could_cost(mode, threads, available, quota) -> None:
    assert plan_for(mode, threads, available=available, quota=quota) is None


def test_the_cgroup_quota_in_cpus_from_v2_or_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(v2) == 2.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path / "v1") is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def _threads_cpus(pid: int) -> list[frozenset[int]]:
    """Each thread's allowed CPUs, from /proc."""
    cpus = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        (line,) = [line for line in status.splitlines() if line.startswith("Cpus_allowed_list:")]
        allowed: set[int] = set()
        for part in line.split(":", 1)[1].strip().split(","):
            first, _, last = part.partition("-")
            allowed.update(range(int(first), int(last or first) + 1))
        cpus.append(frozenset(allowed))
    return cpus


def test_the_started_service_pins_its_batch_thread_as_planned(redis_server, tmp_path) -> None:
    """The service makes the plan this machine gives for one thread (launch's default): with
    one, exactly one thread (the batch thread) runs on the model's CPU and every other thread
    on the rest; without one, every thread may run anywhere."""
    plan = plan_cpus("auto", 1)
    service = start_inference(tmp_path, redis_url=redis_server.url, PERENNIAL_TORCH_THREADS=1)
    try:
        if plan is None:
            everywhere = frozenset(os.sched_getaffinity(0))
            assert set(_threads_cpus(service.process.pid)) == {everywhere}
            return
        wait_for(  # the batch thread pins itself when it starts
            lambda: _threads_cpus(service.process.pid).count(plan.model) == 1,
            30,
            "one thread on the model's CPU",
            seen=lambda: _threads_cpus(service.process.pid),
        )
        others = [cpus for cpus in _threads_cpus(service.process.pid) if cpus != plan.model]
        assert others and set(others) == {plan.others}
    finally:
        service.stop()
