"""The registry both services expose: default collectors on, no `_created` series."""

from __future__ import annotations

from prometheus_client import Counter, generate_latest

from perennial.metrics import metric_args
from perennial.runtime import service_registry


def test_service_registry_has_process_python_and_gc_metrics_and_no_created_series() -> None:
    registry = service_registry()
    counter = Counter("things", "Things.", ["adapter"], **metric_args("test", registry))
    counter.labels("a").inc()
    text = generate_latest(registry).decode()
    assert "perennial_test_things_total" in text
    for family in ("process_cpu_seconds_total", "python_info", "python_gc_objects_collected_total"):
        assert f"\n{family}" in text, family
    assert "_created" not in text
