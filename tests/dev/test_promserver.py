"""A real Prometheus scrapes an in-process drift monitor's /metrics and evaluates our rules.

Proves the rule file loads and evaluates cleanly in a real server and that DriftDetected
fires only after a drift (the end-to-end version with the services is tests/test_observability.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from perennial_dev.localstack import free_port
from perennial_dev.promserver import PrometheusServer, start_prometheus
from services.inference.metrics import InferenceDriftMetrics
from services.inference.monitor import InferenceDriftMonitor, MonitorConfig

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


def eventually(check, timeout: float = 60.0, what: str = "condition"):
    """Poll `check` (50 ms apart) until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def exporter() -> Iterator[tuple[CollectorRegistry, int]]:
    registry, port = CollectorRegistry(), free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield registry, port
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def prometheus(tmp_path: Path, exporter) -> Iterator[PrometheusServer]:
    server = start_prometheus(
        tmp_path / "prometheus", {"inference": [f"127.0.0.1:{exporter[1]}"]}, [RULES]
    )
    try:
        yield server
    finally:
        server.stop()


def test_drift_detected_is_raised_after_the_drift_and_not_before(
    exporter, prometheus: PrometheusServer
) -> None:
    registry, _ = exporter
    rng = np.random.default_rng(0)
    shift = {"value": 0.0}

    def embed(texts: list[str]) -> np.ndarray:
        return rng.normal(shift["value"], 1.0, (len(texts), 16))

    config = MonitorConfig(
        input_reference=64, input_window=32, prediction_reference=64, prediction_window=32
    )
    monitor = InferenceDriftMonitor(InferenceDriftMetrics(registry), embed, config)
    for _ in range(30):
        monitor.submit("wn", ["t"] * 8, ["a", "b"] * 4)
    assert monitor.drain(30)
    observed = 'perennial_inference_drift_observations_total{adapter="wn"}'
    eventually(
        lambda: [r for r in prometheus.query(observed) if r["value"][1] == "240"], what="a scrape"
    )
    # Three evaluation rounds after the scrape: still no alert, and every rule is healthy.
    evaluated = time.time()
    eventually(
        lambda: all(
            r.get("lastEvaluation", "") > _rfc3339(evaluated + 2)
            for g in prometheus.rules()
            for r in g["rules"]
        ),
        what="rule evaluations",
    )
    assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "DriftDetected"]
    unhealthy = [
        (r["name"], r.get("lastError"))
        for g in prometheus.rules()
        for r in g["rules"]
        if r["health"] != "ok"
    ]
    assert not unhealthy
    recorded = "namespace_job_adapter_signal:perennial_drift_detections:increase15m"
    assert prometheus.query(recorded)  # recorded, 0

    drift_at = time.time()
    shift["value"] = 1.0
    for _ in range(12):
        monitor.submit("wn", ["t"] * 8, ["a", "b"] * 4)
    assert monitor.drain(30)
    # Active (pending): its `for` of 5 minutes turns it into firing; the job it came from and
    # the adapter and signal are on the alert.
    active = eventually(
        lambda: [a for a in prometheus.alerts() if a["labels"]["alertname"] == "DriftDetected"],
        timeout=90,
        what="DriftDetected active",
    )
    assert active[0]["labels"] == {
        "alertname": "DriftDetected",
        "job": "inference",
        "adapter": "wn",
        "signal": "input",
        "severity": "warning",
    }
    assert _epoch(active[0]["activeAt"]) >= drift_at - 1


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
