"""Prometheus metrics of the inference service (naming rules: `perennial.metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from perennial.metrics import FRESHNESS_BUCKETS, LATENCY_BUCKETS, UPDATE_BUCKETS, metric_args


class InferenceMetrics:
    """`perennial_inference_*`: requests, batching, resident adapters, swaps, freshness."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = metric_args("inference", registry)
        self.requests = Counter(
            "requests",
            "Inference requests (gRPC and REST) by adapter and gRPC status code.",
            ["adapter", "code"],
            **common,
        )
        self.request_duration = Histogram(
            "request_duration",
            "Inference latency (gRPC and REST) by adapter and gRPC status code.",
            ["adapter", "code"],
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.queue_duration = Histogram(
            "queue_duration",
            "Time a request waited for its batch to start.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Rows per executed batch.",
            unit="rows",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            **common,
        )
        self.batch_duration = Histogram(
            "batch_duration",
            "Model time of one executed batch.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.queue_rows = Gauge(
            "queue_rows", "Rows waiting in the batch queue.", unit="rows", **common
        )
        self.resident_adapters = Gauge(
            "resident_adapters", "Adapter versions held in memory.", **common
        )
        self.predictions_logged = Counter(
            "predictions_logged",
            "Predictions the Kafka prediction log confirmed (PERENNIAL_PREDICTION_LOG).",
            **common,
        )
        self.predictions_dropped = Counter(
            "predictions_dropped",
            "Predictions not logged: queue full, or Kafka unavailable or failing.",
            ["reason"],
            **common,
        )
        self.resident_bytes = Gauge(
            "resident_adapter_memory",
            "Memory of the resident adapter versions.",
            unit="bytes",
            **common,
        )
        self.evictions = Counter(
            "adapter_evictions",
            "Served adapter versions evicted by the memory budget (LRU).",
            **common,
        )
        self.version_info = Gauge(
            "adapter_version_info",
            "1 for the version each resident adapter serves by default.",
            ["adapter", "version"],
            **common,
        )
        self.swaps = Counter("swaps", "Adapter versions swapped in.", ["adapter"], **common)
        self.swap_duration = Histogram(
            "swap_duration",
            "Fetch, verify and build time of a new version.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.verification_failures = Counter(
            "verification_failures",
            "Snapshot versions rejected, once per version: sha256 mismatch (checksum), "
            "malformed manifest (manifest) or undecodable blob (decode).",
            ["adapter", "reason"],
            **common,
        )
        self.served_sequence = Gauge(
            "served_sequence", "Sequence number of the version being served.", ["adapter"], **common
        )
        self.freshness = Histogram(
            "freshness",
            "Time from an example's event time to serving a version that contains it.",
            ["adapter"],
            unit="seconds",
            buckets=FRESHNESS_BUCKETS,
            **common,
        )


class InferenceDriftMetrics:
    """`perennial_inference_drift_*`: input and prediction drift, computed off the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = metric_args("inference", registry)
        self.score = Gauge(
            "drift_score",
            "Effect size of the last drift test: input = largest KS statistic over "
            "the projections, prediction = Jensen-Shannon distance (0 = no change, 1 = disjoint).",
            ["adapter", "signal"],
            **common,
        )
        self.p_value = Gauge(
            "drift_p_value",
            "Multiple-testing-corrected p-value of the last drift test.",
            ["adapter", "signal"],
            **common,
        )
        self.detections = Counter(
            "drift_detections",
            "Drifts detected (signal = input or prediction).",
            ["adapter", "signal"],
            **common,
        )
        self.observations = Counter(
            "drift_observations", "Request texts fed to the drift detectors.", ["adapter"], **common
        )
        self.dropped = Counter(
            "drift_dropped_batches",
            "Request batches not monitored because the drift queue was full.",
            ["adapter"],
            **common,
        )
        self.update_duration = Histogram(
            "drift_update_duration",
            "Background time to update the drift detectors with one batch.",
            unit="seconds",
            buckets=UPDATE_BUCKETS,
            **common,
        )
