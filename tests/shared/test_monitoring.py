"""What both services' monitors share: the background worker and the null monitor."""

from __future__ import annotations

import torch  # noqa: F401  (loads torch's OpenMP runtime, as in the services)
from scipy import stats  # noqa: F401  (loads scipy's BLAS, as the drift detectors do)
from threadpoolctl import threadpool_info

from perennial.monitoring import BackgroundWorker, NoMonitor


def test_the_null_monitor_accepts_everything() -> None:
    monitor = NoMonitor()
    assert monitor.submit("a", ["x"], ["y"]) is False
    assert monitor.submit_prequential("a", ["y"], ["y"]) is False
    assert monitor.submit_evaluation("a", {"y": 1.0}) is False
    assert monitor.evaluation_due("a", 3) is False and monitor.drain()


def test_updates_run_with_one_blas_and_one_openmp_thread() -> None:
    """Oversubscription on a small machine: every BLAS and OpenMP pool the process has loaded
    runs one thread inside an update (OpenMP's limit is per thread, so this is the worker's)."""
    seen: list[dict] = []
    worker = BackgroundWorker("test", 4, lambda adapter: None)
    assert worker.submit("a", lambda adapter: seen.extend(threadpool_info()))
    assert worker.drain(timeout=30)
    apis = {info["user_api"] for info in seen}
    assert {"blas", "openmp"} <= apis
    assert [info["num_threads"] for info in seen] == [1] * len(seen)
