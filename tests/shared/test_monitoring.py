"""The null monitor shared by both services."""

from __future__ import annotations

from perennial.monitoring import NoMonitor


def test_the_null_monitor_accepts_everything() -> None:
    monitor = NoMonitor()
    assert monitor.submit("a", ["x"], ["y"]) is False
    assert monitor.submit_prequential("a", ["y"], ["y"]) is False
    assert monitor.submit_evaluation("a", {"y": 1.0}) is False
    assert monitor.evaluation_due("a", 3) is False and monitor.drain()
