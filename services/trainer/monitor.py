"""Concept drift, new classes and forgetting of the trainer, updated on a background thread.

Per adapter: concept drift (`ErrorRateDrift`) on the prequential errors (predict
before learn), new-class arrivals (`NewClass`), and the accuracy matrix
(`AccuracyMatrix`) from each holdout evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from river import base

from perennial.drift import ErrorRateDrift, NewClass
from perennial.forgetting import AccuracyMatrix
from perennial.monitoring import BackgroundWorker
from services.trainer.metrics import TrainerDriftMetrics

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        metrics: TrainerDriftMetrics,
        queue_size: int = 1024,
        concept: base.DriftDetector | None = None,
        forgetting_every_seconds: float = 30.0,
    ) -> None:
        if forgetting_every_seconds < 0:
            raise ValueError(
                f"forgetting_every_seconds must be >= 0, got {forgetting_every_seconds}"
            )
        self.metrics = metrics
        self.concept = concept if concept is not None else ErrorRateDrift()
        self.forgetting_every_seconds = forgetting_every_seconds
        self._states: dict[str, _TrainerState] = {}
        self._last_evaluation: dict[
            str, tuple[float, int]
        ] = {}  # adapter -> (monotonic time, classes)
        self._worker = BackgroundWorker(
            "drift-trainer", queue_size, lambda adapter: metrics.dropped.labels(adapter).inc()
        )

    def evaluation_due(self, adapter: str, classes: int) -> bool:
        """Whether to evaluate the holdout now (call from one thread: the trainer's)."""
        last = self._last_evaluation.get(adapter)
        now = time.monotonic()
        if last is None or classes != last[1] or now - last[0] >= self.forgetting_every_seconds:
            self._last_evaluation[adapter] = (now, classes)
            return True
        return False

    def before_learning(
        self, adapter: str, learner, inputs: list, labels: Sequence[str], predict: bool = True
    ) -> None:
        """One micro-batch before `learner` learns it: every label is queued (new classes are
        counted for every example); with `predict`, `learner` also predicts `inputs` first (on
        the caller's thread: the model must not have moved) for the concept-drift signal."""
        predicted = learner.predict(inputs) if predict and learner.classes else [None] * len(inputs)
        self.submit_prequential(adapter, labels, predicted)

    def after_snapshot(
        self,
        adapter: str,
        learner,
        holdout: Callable[[set[str]], tuple[list, list[str]]],
        labeller: Callable[[], Callable[[list], list[str]]] | None = None,
    ) -> None:
        """When due, evaluate `learner` on `holdout(classes)` (inputs, labels) for the accuracy
        matrix — with the predictions of `labeller()` when given (the snapshot's own, e.g. from
        cached holdout features), else `learner.predict`. Runs on the caller's thread; a
        failing holdout read only skips this evaluation."""
        if not self.evaluation_due(adapter, len(learner.classes)):
            return
        try:
            inputs, labels = holdout(set(learner.classes))
        except Exception as error:  # e.g. Redis away: the next snapshot tries again
            self._last_evaluation.pop(adapter, None)
            log.warning(
                "holdout unavailable; forgetting not evaluated",
                extra={"fields": {"adapter": adapter, "error": str(error)}},
            )
            return
        if inputs:
            predict = labeller() if labeller is not None else learner.predict
            self.submit_evaluation(adapter, per_class_accuracy(labels, predict(inputs)))

    def submit_prequential(
        self, adapter: str, labels: Sequence[str], predicted: Sequence[str | None]
    ) -> bool:
        """Queue one micro-batch: true labels and what the model predicted *before* learning
        them (None where it did not predict: an empty head, or outside the prediction budget;
        such examples count for new classes but not for the error rate)."""
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
            self.metrics.prequential.labels(adapter)
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
            if guess is None:
                continue  # not predicted (budget, empty head): no prequential outcome
            self.metrics.prequential.labels(adapter).inc()
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
