"""Trainer drift monitor: concept drift, new classes and forgetting, metrics from a fresh registry."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from services.trainer.metrics import TrainerDriftMetrics
from services.trainer.monitor import TrainerDriftMonitor


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_trainer_monitor_new_classes_concept_drift_and_forgetting() -> None:
    registry = CollectorRegistry()
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(registry))
    monitor.submit_classes("wn", ["animal"])
    rng = random.Random(4)
    labels = [rng.choice(["animal", "plant"]) for _ in range(800)]
    right = [label if rng.random() < 0.9 else "other" for label in labels]
    for start in range(0, 800, 16):
        monitor.submit_prequential("wn", labels[start : start + 16], right[start : start + 16])
    assert monitor.drain(timeout=30)
    assert (
        value(registry, "perennial_trainer_new_classes_total", adapter="wn") == 1
    )  # plant; animal was known
    assert (
        value(registry, "perennial_trainer_drift_detections_total", adapter="wn", signal="concept")
        == 0
    )
    wrong = [label if rng.random() < 0.5 else "other" for label in labels]
    for start in range(0, 800, 16):
        monitor.submit_prequential("wn", labels[start : start + 16], wrong[start : start + 16])
    monitor.submit_evaluation("wn", {"animal": 0.9, "plant": 0.7})
    monitor.submit_evaluation("wn", {"animal": 0.6, "plant": 0.6, "fish": 0.8})
    assert monitor.drain(timeout=30)
    assert (
        value(registry, "perennial_trainer_drift_detections_total", adapter="wn", signal="concept")
        >= 1
    )
    assert value(registry, "perennial_trainer_prequential_error_ratio", adapter="wn") > 0.3
    assert value(registry, "perennial_trainer_stages", adapter="wn") == 2
    assert value(
        registry, "perennial_trainer_average_forgetting_ratio", adapter="wn"
    ) == pytest.approx(0.2)
    assert value(
        registry, "perennial_trainer_backward_transfer_ratio", adapter="wn"
    ) == pytest.approx(-0.2)
    assert value(registry, "perennial_trainer_stage_accuracy_ratio", adapter="wn", stage="1") == 0.8
    assert value(
        registry,
        "perennial_trainer_accuracy_matrix_ratio",
        adapter="wn",
        after_stage="0",
        stage="0",
    ) == pytest.approx(0.8)
    assert value(
        registry, "perennial_trainer_seen_classes_accuracy_ratio", adapter="wn"
    ) == pytest.approx(2 / 3)


def test_evaluation_is_due_on_new_classes_or_after_the_interval() -> None:
    monitor = TrainerDriftMonitor(
        TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=3600
    )
    assert monitor.evaluation_due("wn", classes=2)
    assert not monitor.evaluation_due("wn", classes=2)
    assert monitor.evaluation_due("wn", classes=3)  # a new class: the accuracy matrix gets a stage
    assert monitor.evaluation_due("other", classes=3)
    always = TrainerDriftMonitor(
        TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=0
    )
    assert always.evaluation_due("wn", 2) and always.evaluation_due("wn", 2)
    with pytest.raises(ValueError, match="forgetting_every_seconds must be >= 0, got -1"):
        TrainerDriftMonitor(TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=-1)


def test_per_class_accuracy_doctest() -> None:
    import doctest

    from services.trainer import monitor

    assert doctest.testmod(monitor).failed == 0


class _Learner:
    """A stand-in learner (pure Python): predicts the first letter, knows `classes`."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def predict(self, inputs: list[str]) -> list[str]:
        return [text[0] for text in inputs]


def test_before_learning_and_after_snapshot_feed_the_monitor() -> None:
    registry = CollectorRegistry()
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(registry), forgetting_every_seconds=0)
    monitor.before_learning(
        "wn", _Learner([]), ["a1", "b1"], ["a", "b"]
    )  # empty head: nothing to predict
    monitor.before_learning("wn", _Learner(["a", "b"]), ["a2", "a3"], ["a", "b"])
    monitor.after_snapshot(
        "wn", _Learner(["a", "b"]), lambda classes: (["a4", "a5", "b6"], ["a", "b", "b"])
    )

    def broken(classes: set[str]):
        raise ConnectionError("redis away")

    monitor.after_snapshot("wn", _Learner(["a", "b"]), broken)  # skipped, logged
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_trainer_new_classes_total", adapter="wn") == 2
    assert value(registry, "perennial_trainer_prequential_error_ratio", adapter="wn") == 0.5
    assert (
        value(registry, "perennial_trainer_stage_accuracy_ratio", adapter="wn", stage="0") == 0.75
    )
