"""Prometheus metrics of the trainer service (naming rules: `perennial.metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from perennial.metrics import LATENCY_BUCKETS, metric_args
from perennial.store import CORRUPTION_REASONS


class TrainerMetrics:
    """`perennial_trainer_*`: consumption, steps, snapshots, guardrail, lag, dependencies."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = metric_args("trainer", registry)
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
            "train_step_duration",
            "Duration of one optimizer step.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.loss = Gauge("train_loss", "Loss of the last micro-batch.", ["adapter"], **common)
        self.snapshots = Counter(
            "snapshots_published", "Snapshots written to Redis.", ["adapter"], **common
        )
        self.snapshot_sequence = Gauge(
            "snapshot_sequence",
            "Sequence number of the adapter's newest snapshot.",
            ["adapter"],
            **common,
        )
        self.snapshot_duration = Histogram(
            "snapshot_duration",
            "Time to serialise and write one snapshot.",
            unit="seconds",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.classes = Gauge("classes", "Classes the adapter's head knows.", ["adapter"], **common)
        self.warmup_progress = Gauge(
            "warmup_progress_ratio",
            "Share of the FSA PET warm-up's steps done (0 while its window fills).",
            ["adapter"],
            **common,
        )
        self.last_snapshot = Gauge(
            "last_snapshot_timestamp",
            "When the adapter's newest snapshot was written.",
            ["adapter"],
            unit="seconds",
            **common,
        )
        self.guardrail_holds = Counter(
            "guardrail_holds",
            "Candidates held back by the forgetting guardrail.",
            ["adapter"],
            **common,
        )
        self.served_accuracy = Gauge(
            "served_holdout_accuracy_ratio",
            "Holdout accuracy of the version served after the latest guardrail verdict "
            "(on the classes the previous head knew).",
            ["adapter"],
            **common,
        )
        self.feedback_joined = Counter(
            "feedback_joined",
            "Feedback joined with its logged prediction, by whether the served label was right "
            "(served accuracy, prequential: correct / all).",
            ["adapter", "served"],
            **common,
        )
        self.feedback_predictions_held = Gauge(
            "feedback_predictions_held",
            "Logged predictions the feedback join holds (PERENNIAL_FEEDBACK_MAX_PREDICTIONS).",
            **common,
        )
        self.feedback_predictions_dropped = Counter(
            "feedback_predictions_dropped",
            "Logged predictions the join dropped: bound (the oldest beyond the limit), expired "
            "(older than the window), undecodable.",
            ["reason"],
            **common,
        )
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Records between the consumer position and the high-watermark.",
            ["topic", "partition"],
            unit="records",
            **common,
        )
        self.paused = Gauge(
            "paused", "1 while an operator has paused the adapter.", ["adapter"], **common
        )
        self.backpressure = Gauge(
            "backpressure", "1 while partitions are paused because too many records wait.", **common
        )
        self.dependency_errors = Counter(
            "dependency_errors",
            "Failed calls to Redis or Kafka (retried).",
            ["dependency"],
            **common,
        )
        for dependency in ("redis", "kafka"):  # exported (0) before the first failure
            self.dependency_errors.labels(dependency)
        self.dead_letters_truncated = Counter(
            "dead_letters_truncated",
            "Dead letters sent truncated because the record was too large for the topic.",
            **common,
        )
        self.corrupt_snapshots = Counter(
            "corrupt_snapshots",
            "Snapshot versions that failed verification when the trainer loaded them.",
            ["reason"],
            **common,
        )
        for reason in CORRUPTION_REASONS:  # every reason reads 0 until it happens
            self.corrupt_snapshots.labels(reason)
        self.fallbacks = Counter(
            "snapshot_fallbacks",
            "Times a corrupted latest snapshot made the trainer fall back to an older version.",
            ["adapter"],
            **common,
        )
        self.fenced = Counter(
            "snapshots_fenced",
            "Snapshot writes rejected because another writer moved the adapter's lineage.",
            ["adapter"],
            **common,
        )
        self.resident_adapters = Gauge(
            "resident_adapters", "Adapters whose learner is in this trainer's memory.", **common
        )
        self.adapter_evictions = Counter(
            "adapter_evictions",
            "Idle adapters snapshotted and dropped from memory (max_adapters).",
            **common,
        )
        self.stalled = Gauge(
            "stalled",
            "1 while a thread of the trainer (training, poll) is dead or silent past stall_seconds.",
            ["thread"],
            **common,
        )
        self.heartbeat_age = Gauge(
            "heartbeat_age",
            "Seconds since the thread last showed progress.",
            ["thread"],
            unit="seconds",
            **common,
        )


class TrainerDriftMetrics:
    """`perennial_trainer_*`: concept drift, new classes and forgetting."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = metric_args("trainer", registry)
        self.error_rate = Gauge(
            "prequential_error_ratio",
            "Error rate of predict-before-learn over the last examples.",
            ["adapter"],
            **common,
        )
        self.detections = Counter(
            "drift_detections",
            "Drifts detected (signal = concept: a rise of the prequential error).",
            ["adapter", "signal"],
            **common,
        )
        self.prequential = Counter(
            "prequential_examples",
            "Examples predicted before learning (the concept-drift signal; rationed by "
            "PERENNIAL_PREQUENTIAL_BUDGET, examples of new classes excluded).",
            ["adapter"],
            **common,
        )
        self.new_classes = Counter(
            "new_classes", "Classes seen for the first time on the stream.", ["adapter"], **common
        )
        self.seen_accuracy = Gauge(
            "seen_classes_accuracy_ratio",
            "Holdout accuracy on every class seen so far (A_t).",
            ["adapter"],
            **common,
        )
        self.incremental_accuracy = Gauge(
            "average_incremental_accuracy_ratio",
            "Mean over class-arrival stages of A_t.",
            ["adapter"],
            **common,
        )
        self.stage_accuracy = Gauge(
            "stage_accuracy_ratio",
            "Current holdout accuracy on the classes that arrived in a stage.",
            ["adapter", "stage"],
            **common,
        )
        self.matrix = Gauge(
            "accuracy_matrix_ratio",
            "R[after_stage, stage]: accuracy on a stage's classes at the end "
            "of a later stage (the accuracy matrix).",
            ["adapter", "after_stage", "stage"],
            **common,
        )
        self.forgetting = Gauge(
            "average_forgetting_ratio",
            "Mean drop from the best to the current accuracy of earlier stages.",
            ["adapter"],
            **common,
        )
        self.backward_transfer = Gauge(
            "backward_transfer_ratio",
            "Mean change of earlier stages' accuracy since they were learnt.",
            ["adapter"],
            **common,
        )
        self.stages = Gauge("stages", "Class-arrival stages so far.", ["adapter"], **common)
        self.dropped = Counter(
            "drift_dropped_batches",
            "Batches not monitored because the drift queue was full.",
            ["adapter"],
            **common,
        )
