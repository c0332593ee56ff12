"""Drift monitors: detectors updated off the caller's thread, metrics read back from a fresh registry."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from perennial.monitoring import (
    InferenceDriftMetrics,
    InferenceDriftMonitor,
    MonitorConfig,
    TrainerDriftMetrics,
    TrainerDriftMonitor,
    frozen_token_embedder,
)

SMALL = MonitorConfig(input_reference=64, input_window=32, prediction_reference=64, prediction_window=32)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def one_hot_embedder(dim: int = 8):
    """Text "k:<i>" → a noisy vector around coordinate i (a stand-in input distribution)."""
    rng = np.random.default_rng(0)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = rng.normal(0, 0.3, (len(texts), dim))
        for row, text in enumerate(texts):
            vectors[row, int(text.split(":")[1]) % dim] += 1.0
        return vectors

    return embed


def test_inference_monitor_detects_input_and_prediction_drift_after_the_change() -> None:
    registry = CollectorRegistry()
    monitor = InferenceDriftMonitor(InferenceDriftMetrics(registry), one_hot_embedder(), SMALL)
    rng = random.Random(0)
    for _ in range(40):  # 320 texts from sources 0..3, predictions a/b
        ids = [rng.randrange(4) for _ in range(8)]
        assert monitor.submit("news", [f"k:{i}" for i in ids], ["a" if i < 2 else "b" for i in ids])
    assert monitor.drain(timeout=30)
    for signal in ("input", "prediction"):
        assert value(registry, "perennial_inference_drift_detections_total", adapter="news", signal=signal) == 0
    for _ in range(20):  # sources 4..7, a new predicted class c
        ids = [4 + rng.randrange(4) for _ in range(8)]
        monitor.submit("news", [f"k:{i}" for i in ids], ["c"] * 8)
    assert monitor.drain(timeout=30)
    for signal in ("input", "prediction"):
        assert value(registry, "perennial_inference_drift_detections_total", adapter="news", signal=signal) >= 1
    assert value(registry, "perennial_inference_drift_observations_total", adapter="news") == 480
    assert value(registry, "perennial_inference_drift_update_duration_seconds_count") == 60


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    registry = CollectorRegistry()
    release, started = threading.Event(), threading.Event()

    def blocked(texts: list[str]) -> np.ndarray:
        started.set()
        release.wait(30)
        return np.zeros((len(texts), 4))

    monitor = InferenceDriftMonitor(InferenceDriftMetrics(registry), blocked, MonitorConfig(queue_size=2))
    assert monitor.submit("a", ["x"], ["p"])
    assert started.wait(30)  # the worker holds the first batch; two more fit in the queue
    accepted = [monitor.submit("a", ["x"], ["p"]) for _ in range(5)]
    assert accepted == [True, True, False, False, False]
    assert value(registry, "perennial_inference_drift_dropped_batches_total", adapter="a") == 3
    release.set()
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_inference_drift_observations_total", adapter="a") == 3


def test_frozen_token_embedder_ignores_the_adapter(tiny_backbone) -> None:
    embed = frozen_token_embedder(tiny_backbone)
    vectors = embed(["a cat", "a much longer sentence about dogs"])
    assert vectors.shape == (2, tiny_backbone.dim)
    assert np.isfinite(vectors).all() and not np.allclose(vectors[0], vectors[1])
    np.testing.assert_array_equal(embed(["a cat"])[0], vectors[0])


def test_monitor_config_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="input_alpha must be in \\(0, 1\\), got 0"):
        MonitorConfig(input_alpha=0)


def test_trainer_monitor_new_classes_concept_drift_and_forgetting() -> None:
    registry = CollectorRegistry()
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(registry))
    monitor.submit_classes("wn", ["animal"])
    rng = random.Random(4)
    labels = [rng.choice(["animal", "plant"]) for _ in range(800)]
    right = [label if rng.random() < 0.9 else "other" for label in labels]
    for start in range(0, 800, 16):
        monitor.submit_prequential("wn", labels[start:start + 16], right[start:start + 16])
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_trainer_new_classes_total", adapter="wn") == 1  # plant; animal was known
    assert value(registry, "perennial_trainer_drift_detections_total", adapter="wn", signal="concept") == 0
    wrong = [label if rng.random() < 0.5 else "other" for label in labels]
    for start in range(0, 800, 16):
        monitor.submit_prequential("wn", labels[start:start + 16], wrong[start:start + 16])
    monitor.submit_evaluation("wn", {"animal": 0.9, "plant": 0.7})
    monitor.submit_evaluation("wn", {"animal": 0.6, "plant": 0.6, "fish": 0.8})
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_trainer_drift_detections_total", adapter="wn", signal="concept") >= 1
    assert value(registry, "perennial_trainer_prequential_error_ratio", adapter="wn") > 0.3
    assert value(registry, "perennial_trainer_stages", adapter="wn") == 2
    assert value(registry, "perennial_trainer_average_forgetting_ratio", adapter="wn") == pytest.approx(0.2)
    assert value(registry, "perennial_trainer_backward_transfer_ratio", adapter="wn") == pytest.approx(-0.2)
    assert value(registry, "perennial_trainer_stage_accuracy_ratio", adapter="wn", stage="1") == 0.8
    assert value(registry, "perennial_trainer_accuracy_matrix_ratio", adapter="wn", after_stage="0",
                 stage="0") == pytest.approx(0.8)
    assert value(registry, "perennial_trainer_seen_classes_accuracy_ratio", adapter="wn") == pytest.approx(2 / 3)


def test_monitor_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERENNIAL_DRIFT_INPUT_WINDOW", "48")
    monkeypatch.setenv("PERENNIAL_DRIFT_PREDICTION_ALPHA", "0.01")
    config = MonitorConfig.from_env()
    assert (config.input_window, config.prediction_alpha, config.queue_size) == (48, 0.01, 1024)
    monkeypatch.setenv("PERENNIAL_DRIFT_QUEUE_SIZE", "many")
    with pytest.raises(ValueError, match="PERENNIAL_DRIFT_QUEUE_SIZE='many' is invalid"):
        MonitorConfig.from_env()


def test_evaluation_is_due_on_new_classes_or_after_the_interval() -> None:
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=3600)
    assert monitor.evaluation_due("wn", classes=2)
    assert not monitor.evaluation_due("wn", classes=2)
    assert monitor.evaluation_due("wn", classes=3)  # a new class: the accuracy matrix gets a stage
    assert monitor.evaluation_due("other", classes=3)
    always = TrainerDriftMonitor(TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=0)
    assert always.evaluation_due("wn", 2) and always.evaluation_due("wn", 2)
    with pytest.raises(ValueError, match="forgetting_every_seconds must be >= 0, got -1"):
        TrainerDriftMonitor(TrainerDriftMetrics(CollectorRegistry()), forgetting_every_seconds=-1)


def test_per_class_accuracy_doctest() -> None:
    import doctest

    from perennial import monitoring

    assert doctest.testmod(monitoring).failed == 0


def test_the_null_monitor_accepts_everything() -> None:
    from perennial.monitoring import NoMonitor

    monitor = NoMonitor()
    assert monitor.submit("a", ["x"], ["y"]) is False
    assert monitor.submit_prequential("a", ["y"], ["y"]) is False
    assert monitor.submit_evaluation("a", {"y": 1.0}) is False
    assert monitor.evaluation_due("a", 3) is False and monitor.drain()


class _Learner:
    """A stand-in learner (pure Python): predicts the first letter, knows `classes`."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def predict(self, inputs: list[str]) -> list[str]:
        return [text[0] for text in inputs]


def test_before_learning_and_after_snapshot_feed_the_monitor() -> None:
    registry = CollectorRegistry()
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(registry), forgetting_every_seconds=0)
    monitor.before_learning("wn", _Learner([]), ["a1", "b1"], ["a", "b"])  # empty head: nothing to predict
    monitor.before_learning("wn", _Learner(["a", "b"]), ["a2", "a3"], ["a", "b"])
    monitor.after_snapshot("wn", _Learner(["a", "b"]), lambda classes: (["a4", "a5", "b6"], ["a", "b", "b"]))

    def broken(classes: set[str]):
        raise ConnectionError("redis away")

    monitor.after_snapshot("wn", _Learner(["a", "b"]), broken)  # skipped, logged
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_trainer_new_classes_total", adapter="wn") == 2
    assert value(registry, "perennial_trainer_prequential_error_ratio", adapter="wn") == 0.5
    assert value(registry, "perennial_trainer_stage_accuracy_ratio", adapter="wn", stage="0") == 0.75
