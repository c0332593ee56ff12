"""Prometheus metrics of both services, named `perennial_<subsystem>_<name>_<unit>`.

Each set takes an injectable registry, so tests read values from a fresh one.
Label values are bounded: adapter ids (a deployment has a known set), status
codes and error classes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "perennial"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FRESHNESS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"namespace": NAMESPACE, "subsystem": "trainer", "registry": registry}
        self.examples = Counter(
            "examples_consumed", "Examples applied to a learner.", ["adapter"], **common
        )
        self.skipped = Counter(
            "examples_skipped",
            "Records skipped on replay because a snapshot already contains them.",
            ["adapter"],
            **common,
        )
        self.dead_lettered = Counter(
            "records_dead_lettered", "Records sent to the dead-letter topic.", ["reason"], **common
        )
        self.step_duration = Histogram(
            "train_step_duration", "Duration of one optimizer step.", unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.loss = Gauge("train_loss", "Loss of the last micro-batch.", ["adapter"], **common)
        self.snapshots = Counter(
            "snapshots_published", "Snapshots written to Redis.", ["adapter"], **common
        )
        self.snapshot_sequence = Gauge(
            "snapshot_sequence", "Sequence number of the adapter's newest snapshot.", ["adapter"], **common
        )
        self.snapshot_duration = Histogram(
            "snapshot_duration", "Time to serialise and write one snapshot.", unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.classes = Gauge("classes", "Classes the adapter's head knows.", ["adapter"], **common)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"namespace": NAMESPACE, "subsystem": "inference", "registry": registry}
        self.requests = Counter(
            "requests", "ModelInfer requests by adapter and gRPC status code.", ["adapter", "code"], **common
        )
        self.request_duration = Histogram(
            "request_duration", "ModelInfer latency.", ["adapter"], unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.swaps = Counter("swaps", "Adapter versions swapped in.", ["adapter"], **common)
        self.swap_duration = Histogram(
            "swap_duration", "Fetch, verify and build time of a new version.", unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.verification_failures = Counter(
            "verification_failures", "Snapshots rejected because their sha256 did not match.",
            ["adapter"], **common,
        )
        self.served_sequence = Gauge(
            "served_sequence", "Sequence number of the version being served.", ["adapter"], **common
        )
        self.freshness = Histogram(
            "freshness", "Time from an example's event time to serving a version that contains it.",
            ["adapter"], unit="seconds", buckets=FRESHNESS_BUCKETS, **common,
        )
