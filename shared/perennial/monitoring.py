"""Drift and forgetting monitors of the services, and their Prometheus metrics.

Detectors run off the hot path: the caller hands a batch to `submit`, which only
puts it on a bounded queue (never blocks; a full queue drops the batch and counts
it), and one background thread updates the detectors and the metrics.

- Inference (`InferenceDriftMonitor`): per adapter, input drift (`EmbeddingDrift`)
  on a frozen representation of each request text and prediction drift
  (`PredictionDrift`) on its predicted class.
- Trainer (`TrainerDriftMonitor`): per adapter, concept drift (`ErrorRateDrift`) on
  the prequential errors (predict before learn), new-class arrivals (`NewClass`),
  and the accuracy matrix (`AccuracyMatrix`) from each holdout evaluation.

Input drift uses the *frozen* token embeddings of the backbone, mean-pooled: the
served model's pooled embedding moves whenever a new adapter version is swapped
in (LoRA sits inside the encoder), which would read as input drift with no change
in the inputs; the frozen table costs one lookup per token, not a forward pass.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from river import base
from threadpoolctl import ThreadpoolController

from perennial.config import env
from perennial.drift import EmbeddingDrift, ErrorRateDrift, NewClass, PredictionDrift
from perennial.forgetting import AccuracyMatrix

log = logging.getLogger("perennial.drift")
NAMESPACE = "perennial"
UPDATE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
Embedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class MonitorConfig:
    """Knobs of a drift monitor.

    queue_size: batches waiting for the background thread; more are dropped (counted).
    input_reference / input_window / input_alpha: `EmbeddingDrift` windows and false-alarm rate.
    prediction_reference / prediction_window / prediction_alpha: the same for `PredictionDrift`.
    """

    queue_size: int = 1024
    input_reference: int = 256
    input_window: int = 128
    input_alpha: float = 0.001
    prediction_reference: int = 500
    prediction_window: int = 200
    prediction_alpha: float = 0.001

    def __post_init__(self) -> None:
        for name in ("queue_size", "input_reference", "input_window", "prediction_reference",
                     "prediction_window"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("input_alpha", "prediction_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")

    @classmethod
    def from_env(cls) -> MonitorConfig:
        """`PERENNIAL_DRIFT_<FIELD>` (e.g. PERENNIAL_DRIFT_INPUT_WINDOW) overrides each default."""
        values = {}
        for name, default in asdict(cls()).items():
            values[name] = env(f"PERENNIAL_DRIFT_{name.upper()}", default, type(default))
        return cls(**values)


class _Worker:
    """A bounded queue drained by one daemon thread; `submit` never blocks.

    Updates run with numpy's BLAS limited to one thread: on a small, busy machine a
    multi-threaded BLAS call oversubscribes the cores (measured: a 384 x 384 SVD step
    took 120 ms instead of 2 ms) and steals CPU from the requests.
    """

    def __init__(self, name: str, queue_size: int, on_drop: Callable[[str], None]) -> None:
        self._queue: queue.Queue[tuple[Callable[..., None], tuple]] = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._blas = ThreadpoolController()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, adapter: str, handler: Callable[..., None], *args: object) -> bool:
        try:
            self._queue.put_nowait((handler, (adapter, *args)))
            return True
        except queue.Full:
            self._on_drop(adapter)
            return False

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch is processed (tests, shutdown); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            handler, args = self._queue.get()
            try:
                with self._blas.limit(limits=1, user_api="blas"):
                    handler(*args)
            except Exception:  # a bad batch must not stop monitoring
                log.exception("drift update failed", extra={"fields": {"adapter": args[0]}})
            finally:
                self._queue.task_done()


def frozen_token_embedder(backbone) -> Embedder:
    """Texts → mean of the backbone's frozen input token embeddings (no PET, no forward pass).

    Uses its own copy of the tokenizer: a fast tokenizer shared with request threads
    can fail with "Already borrowed" when called from two threads at once.
    """
    tokenizer = copy.deepcopy(backbone.tokenizer)
    table = backbone.encoder.get_input_embeddings().weight.detach()
    max_length = backbone.max_length

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        mask = batch["attention_mask"].unsqueeze(-1).to(table.dtype)
        with torch.no_grad():
            vectors = (table[batch["input_ids"]] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return vectors.numpy()

    return embed


# -- inference -----------------------------------------------------------------------------
class InferenceDriftMetrics:
    """`perennial_inference_drift_*`: input and prediction drift, computed off the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"namespace": NAMESPACE, "subsystem": "inference", "registry": registry}
        self.score = Gauge(
            "drift_score", "Effect size of the last drift test: input = largest KS statistic over "
            "the projections, prediction = Jensen-Shannon distance (0 = no change, 1 = disjoint).",
            ["adapter", "signal"], **common)
        self.p_value = Gauge(
            "drift_p_value", "Multiple-testing-corrected p-value of the last drift test.",
            ["adapter", "signal"], **common)
        self.detections = Counter(
            "drift_detections", "Drifts detected (signal = input or prediction).",
            ["adapter", "signal"], **common)
        self.observations = Counter(
            "drift_observations", "Request texts fed to the drift detectors.", ["adapter"], **common)
        self.dropped = Counter(
            "drift_dropped_batches", "Request batches not monitored because the drift queue was full.",
            ["adapter"], **common)
        self.update_duration = Histogram(
            "drift_update_duration", "Background time to update the drift detectors with one batch.",
            unit="seconds", buckets=UPDATE_BUCKETS, **common)


@dataclass
class _InferenceState:
    input: base.DriftDetector
    prediction: base.DriftDetector


class InferenceDriftMonitor:
    """Input and prediction drift per adapter; `submit` is all the request path pays."""

    SIGNALS = ("input", "prediction")

    def __init__(self, metrics: InferenceDriftMetrics, embed: Embedder,
                 config: MonitorConfig = MonitorConfig()) -> None:
        self.metrics = metrics
        self.embed = embed
        self.config = config
        self._states: dict[str, _InferenceState] = {}
        self._worker = _Worker("drift-inference", config.queue_size,
                               lambda adapter: metrics.dropped.labels(adapter).inc())

    @classmethod
    def from_env(cls, registry: CollectorRegistry, backbone) -> InferenceDriftMonitor:
        """The service's monitor: frozen token embeddings of `backbone`, `MonitorConfig.from_env()`."""
        return cls(InferenceDriftMetrics(registry), frozen_token_embedder(backbone), MonitorConfig.from_env())

    def submit(self, adapter: str, texts: Sequence[str], labels: Sequence[str]) -> bool:
        """Queue one answered batch (texts and predicted labels); False if dropped."""
        return self._worker.submit(adapter, self._update, list(texts), list(labels))

    def drain(self, timeout: float | None = None) -> bool:
        return self._worker.drain(timeout)

    def _state(self, adapter: str) -> _InferenceState:
        state = self._states.get(adapter)
        if state is None:
            c = self.config
            state = self._states[adapter] = _InferenceState(
                EmbeddingDrift(reference_size=c.input_reference, window_size=c.input_window,
                               alpha=c.input_alpha),
                PredictionDrift(reference_size=c.prediction_reference, window_size=c.prediction_window,
                                alpha=c.prediction_alpha),
            )
            for signal in self.SIGNALS:  # series exist from the start, so increase() sees the first 0→1
                self.metrics.detections.labels(adapter, signal)
                self.metrics.score.labels(adapter, signal).set(0.0)
                self.metrics.p_value.labels(adapter, signal).set(1.0)
            self.metrics.dropped.labels(adapter)
        return state

    def _update(self, adapter: str, texts: list[str], labels: list[str]) -> None:
        started = time.perf_counter()
        state = self._state(adapter)
        for vector, label in zip(self.embed(texts), labels, strict=True):
            for signal, detector, x in (("input", state.input, vector), ("prediction", state.prediction, label)):
                detector.update(x)
                if detector.drift_detected:
                    self.metrics.detections.labels(adapter, signal).inc()
                    log.warning("drift detected", extra={"fields": {
                        "adapter": adapter, "signal": signal, "score": getattr(detector, "score", None)}})
        for signal, detector in (("input", state.input), ("prediction", state.prediction)):
            if hasattr(detector, "score"):
                self.metrics.score.labels(adapter, signal).set(detector.score)
                self.metrics.p_value.labels(adapter, signal).set(detector.p_value)
        self.metrics.observations.labels(adapter).inc(len(texts))
        self.metrics.update_duration.observe(time.perf_counter() - started)


class NoMonitor:
    """The null monitor: accepts every call and does nothing (monitoring switched off, tests)."""

    def submit(self, *args: object) -> bool:
        return False

    submit_prequential = submit_evaluation = submit_classes = submit

    def before_learning(self, *args: object) -> None:
        return None

    after_snapshot = before_learning

    def evaluation_due(self, adapter: str, classes: int) -> bool:
        return False

    def drain(self, timeout: float | None = None) -> bool:
        return True


# -- trainer ---------------------------------------------------------------------------------
class TrainerDriftMetrics:
    """`perennial_trainer_*`: concept drift, new classes and forgetting."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common = {"namespace": NAMESPACE, "subsystem": "trainer", "registry": registry}
        self.error_rate = Gauge(
            "prequential_error_ratio", "Error rate of predict-before-learn over the last examples.",
            ["adapter"], **common)
        self.detections = Counter(
            "drift_detections", "Drifts detected (signal = concept: a rise of the prequential error).",
            ["adapter", "signal"], **common)
        self.new_classes = Counter(
            "new_classes", "Classes seen for the first time on the stream.", ["adapter"], **common)
        self.seen_accuracy = Gauge(
            "seen_classes_accuracy_ratio", "Holdout accuracy on every class seen so far (A_t).",
            ["adapter"], **common)
        self.incremental_accuracy = Gauge(
            "average_incremental_accuracy_ratio", "Mean over class-arrival stages of A_t.",
            ["adapter"], **common)
        self.stage_accuracy = Gauge(
            "stage_accuracy_ratio", "Current holdout accuracy on the classes that arrived in a stage.",
            ["adapter", "stage"], **common)
        self.matrix = Gauge(
            "accuracy_matrix_ratio", "R[after_stage, stage]: accuracy on a stage's classes at the end "
            "of a later stage (the accuracy matrix).", ["adapter", "after_stage", "stage"], **common)
        self.forgetting = Gauge(
            "average_forgetting_ratio", "Mean drop from the best to the current accuracy of earlier stages.",
            ["adapter"], **common)
        self.backward_transfer = Gauge(
            "backward_transfer_ratio", "Mean change of earlier stages' accuracy since they were learnt.",
            ["adapter"], **common)
        self.stages = Gauge("stages", "Class-arrival stages so far.", ["adapter"], **common)
        self.dropped = Counter(
            "drift_dropped_batches", "Batches not monitored because the drift queue was full.",
            ["adapter"], **common)


@dataclass
class _TrainerState:
    concept: base.DriftDetector
    new_class: NewClass
    matrix: AccuracyMatrix = field(default_factory=AccuracyMatrix)


def per_class_accuracy(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy per true class.

    >>> per_class_accuracy(["a", "a", "b"], ["a", "b", "b"])
    {'a': 0.5, 'b': 1.0}
    """
    right: dict[str, list[bool]] = {}
    for label, guess in zip(labels, predicted, strict=True):
        right.setdefault(label, []).append(label == guess)
    return {label: sum(hits) / len(hits) for label, hits in sorted(right.items())}


class TrainerDriftMonitor:
    """Concept drift, new classes and forgetting per adapter, updated on a background thread.

    The trainer calls `submit_prequential` with each micro-batch's labels and what the
    model predicted before learning them, and after a snapshot asks `evaluation_due`;
    when due, it predicts its per-class holdout and calls `submit_evaluation`.
    `forgetting_every_seconds` bounds how often the holdout is evaluated (a forward
    pass over classes × holdout-per-class texts); a change of the class set is always due.
    """

    def __init__(self, metrics: TrainerDriftMetrics, queue_size: int = 1024,
                 concept: base.DriftDetector | None = None, forgetting_every_seconds: float = 30.0) -> None:
        if forgetting_every_seconds < 0:
            raise ValueError(f"forgetting_every_seconds must be >= 0, got {forgetting_every_seconds}")
        self.metrics = metrics
        self.concept = concept if concept is not None else ErrorRateDrift()
        self.forgetting_every_seconds = forgetting_every_seconds
        self._states: dict[str, _TrainerState] = {}
        self._last_evaluation: dict[str, tuple[float, int]] = {}  # adapter -> (monotonic time, classes)
        self._worker = _Worker("drift-trainer", queue_size,
                               lambda adapter: metrics.dropped.labels(adapter).inc())

    @classmethod
    def from_env(cls, registry: CollectorRegistry) -> TrainerDriftMonitor:
        """PERENNIAL_DRIFT_QUEUE_SIZE, PERENNIAL_FORGETTING_EVERY_SECONDS."""
        return cls(TrainerDriftMetrics(registry), queue_size=env("PERENNIAL_DRIFT_QUEUE_SIZE", 1024, int),
                   forgetting_every_seconds=env("PERENNIAL_FORGETTING_EVERY_SECONDS", 30.0, float))

    def evaluation_due(self, adapter: str, classes: int) -> bool:
        """Whether to evaluate the holdout now (call from one thread: the trainer's)."""
        last = self._last_evaluation.get(adapter)
        now = time.monotonic()
        if last is None or classes != last[1] or now - last[0] >= self.forgetting_every_seconds:
            self._last_evaluation[adapter] = (now, classes)
            return True
        return False

    def before_learning(self, adapter: str, learner, inputs: list, labels: Sequence[str]) -> None:
        """Prequential evaluation of one micro-batch: `learner` predicts `inputs` *before* it
        learns them (on the caller's thread: the model must not have moved), the rest is queued."""
        predicted = learner.predict(inputs) if learner.classes else [None] * len(inputs)
        self.submit_prequential(adapter, labels, predicted)

    def after_snapshot(self, adapter: str, learner,
                       holdout: Callable[[set[str]], tuple[list, list[str]]]) -> None:
        """When due, evaluate `learner` on `holdout(classes)` (inputs, labels) for the accuracy
        matrix. Runs on the caller's thread; a failing holdout read only skips this evaluation."""
        if not self.evaluation_due(adapter, len(learner.classes)):
            return
        try:
            inputs, labels = holdout(set(learner.classes))
        except Exception as error:  # e.g. Redis away: the next snapshot tries again
            self._last_evaluation.pop(adapter, None)
            log.warning("holdout unavailable; forgetting not evaluated", extra={"fields": {
                "adapter": adapter, "error": str(error)}})
            return
        if inputs:
            self.submit_evaluation(adapter, per_class_accuracy(labels, learner.predict(inputs)))

    def submit_prequential(self, adapter: str, labels: Sequence[str], predicted: Sequence[str | None]) -> bool:
        """Queue one micro-batch: true labels and what the model predicted *before* learning
        them (None where it could not predict, e.g. an empty head)."""
        return self._worker.submit(adapter, self._prequential, list(labels), list(predicted))

    def submit_evaluation(self, adapter: str, accuracy: dict[str, float]) -> bool:
        """Queue one holdout evaluation: accuracy per class seen so far."""
        return self._worker.submit(adapter, self._evaluation, dict(accuracy))

    def submit_classes(self, adapter: str, classes: Sequence[str]) -> bool:
        """Queue the classes a resumed adapter already knows (they are not new arrivals)."""
        return self._worker.submit(adapter, self._known, list(classes))

    def drain(self, timeout: float | None = None) -> bool:
        return self._worker.drain(timeout)

    def _state(self, adapter: str) -> _TrainerState:
        state = self._states.get(adapter)
        if state is None:
            state = self._states[adapter] = _TrainerState(self.concept.clone(), NewClass())
            self.metrics.detections.labels(adapter, "concept")
            self.metrics.new_classes.labels(adapter)
            self.metrics.dropped.labels(adapter)
        return state

    def _known(self, adapter: str, classes: list[str]) -> None:
        new_class = self._state(adapter).new_class
        for label in classes:
            new_class.update(label)

    def _prequential(self, adapter: str, labels: list[str], predicted: list[str | None]) -> None:
        state = self._state(adapter)
        for label, guess in zip(labels, predicted, strict=True):
            state.new_class.update(label)
            if state.new_class.drift_detected:
                self.metrics.new_classes.labels(adapter).inc()
                log.info("new class", extra={"fields": {"adapter": adapter, "label": label}})
                continue  # a class never seen cannot be predicted: that error is not concept drift
            state.concept.update(guess != label)
            if state.concept.drift_detected:
                self.metrics.detections.labels(adapter, "concept").inc()
                log.warning("concept drift detected", extra={"fields": {"adapter": adapter}})
        if isinstance(state.concept, ErrorRateDrift):
            self.metrics.error_rate.labels(adapter).set(state.concept.error_rate)

    def _evaluation(self, adapter: str, accuracy: dict[str, float]) -> None:
        matrix = self._state(adapter).matrix
        matrix.record(accuracy)
        m = self.metrics
        m.seen_accuracy.labels(adapter).set(matrix.seen_accuracy)
        m.incremental_accuracy.labels(adapter).set(matrix.average_incremental_accuracy)
        m.forgetting.labels(adapter).set(matrix.average_forgetting)
        m.backward_transfer.labels(adapter).set(matrix.backward_transfer)
        m.stages.labels(adapter).set(matrix.stages)
        rows = matrix.rows
        for stage, value in enumerate(rows[-1]):
            m.stage_accuracy.labels(adapter, str(stage)).set(value)
        for after, row in enumerate(rows):
            for stage, value in enumerate(row):
                m.matrix.labels(adapter, str(after), str(stage)).set(value)
