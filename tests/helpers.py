"""Helpers shared by the tests that run services as processes."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perennial_dev.launch import Service


def wait_for(condition, timeout: float, what: str, interval: float = 0.1, seen=None):
    """Poll `condition` until it returns something truthy; on timeout fail naming `what` and
    what was seen: `seen()` if given, else the condition's last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    saw = seen() if seen is not None else value
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; saw {saw!r}"[:4000])


def stays_alive(service: Service, seconds: float) -> None:
    """Assert `service` keeps running for `seconds` (e.g. while a dependency is away)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert service.process.alive, f"{service.process.name} died; see {service.process.log_path}"
        time.sleep(0.5)


def metric(service: Service, name: str, **labels: str) -> float:
    """Sum of the samples of `name` matching `labels` on the service's /metrics (0 if unreachable)."""
    try:
        text = service.scrape()
    except OSError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
