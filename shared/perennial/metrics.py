"""Metric naming shared by both services: `perennial_<subsystem>_<name>_<unit>`.

Every metric is built with prometheus_client's namespace/subsystem/unit arguments
(`metric_args(subsystem, registry)`), never by concatenating names by hand. Each
service's metric set takes an injectable registry, so tests read values from a
fresh one. Label values are bounded: adapter ids (a deployment has a known set),
status codes and error classes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

NAMESPACE = "perennial"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FRESHNESS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
UPDATE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def metric_args(subsystem: str, registry: CollectorRegistry) -> dict:
    """The keyword arguments every metric of `subsystem` is built with."""
    return {"namespace": NAMESPACE, "subsystem": subsystem, "registry": registry}


def full_name(subsystem: str, name: str, unit: str = "") -> str:
    """The exposed name of a metric, as prometheus_client composes it (for readers of /metrics)."""
    return "_".join(part for part in (NAMESPACE, subsystem, name, unit) if part)
