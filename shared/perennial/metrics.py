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
        self.last_snapshot = Gauge(
            "last_snapshot_timestamp", "When the adapter's newest snapshot was written.", ["adapter"],
            unit="seconds", **common,
        )
        self.guardrail_holds = Counter(
            "guardrail_holds", "Candidates held back by the forgetting guardrail.", ["adapter"], **common
        )
        self.consumer_lag = Gauge(
            "consumer_lag", "Records between the consumer position and the high-watermark.",
            ["topic", "partition"], unit="records", **common,
        )
        self.paused = Gauge("paused", "1 while an operator has paused the adapter.", ["adapter"], **common)
        self.backpressure = Gauge(
            "backpressure", "1 while partitions are paused because too many records wait.", **common
        )
        self.dependency_errors = Counter(
            "dependency_errors", "Failed calls to Redis or Kafka (retried).", ["dependency"], **common
        )


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"namespace": NAMESPACE, "subsystem": "inference", "registry": registry}
        self.requests = Counter(
            "requests", "ModelInfer requests by adapter and gRPC status code.", ["adapter", "code"], **common
        )
        self.request_duration = Histogram(
            "request_duration", "ModelInfer latency by adapter and gRPC status code.", ["adapter", "code"],
            unit="seconds", buckets=LATENCY_BUCKETS, **common,
        )
        self.queue_duration = Histogram(
            "queue_duration", "Time a request waited for its batch to start.", unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.batch_size = Histogram(
            "batch_size", "Rows per executed batch.", unit="rows",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), **common,
        )
        self.batch_duration = Histogram(
            "batch_duration", "Model time of one executed batch.", unit="seconds",
            buckets=LATENCY_BUCKETS, **common,
        )
        self.queue_rows = Gauge("queue_rows", "Rows waiting in the batch queue.", unit="rows", **common)
        self.resident_adapters = Gauge(
            "resident_adapters", "Adapter versions held in memory.", **common
        )
        self.resident_bytes = Gauge(
            "resident_adapter_memory", "Memory of the resident adapter versions.", unit="bytes", **common
        )
        self.evictions = Counter(
            "adapter_evictions", "Served adapter versions evicted by the memory budget (LRU).", **common
        )
        self.version_info = Gauge(
            "adapter_version_info", "1 for the version each resident adapter serves by default.",
            ["adapter", "version"], **common,
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
