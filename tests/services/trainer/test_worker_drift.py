"""The trainer feeds its drift monitor: prequential errors, new classes, forgetting after snapshots."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from perennial.codec import Example
from perennial.learners import LearnerConfig
from perennial.pet import LoRAConfig
from perennial.store import SnapshotStore
from services.trainer.events import EventPublisher
from services.trainer.metrics import TrainerDriftMetrics, TrainerMetrics
from services.trainer.monitor import TrainerDriftMonitor
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Incoming, Trainer

TEXTS = {
    "animal": ["a small dog", "a big cat", "a red fox", "a grey wolf"],
    "plant": ["a tall tree", "a green fern", "a wild rose", "a young oak"],
    "artifact": ["an old house", "a fast car", "a wooden chair", "a sharp knife"],
}


@pytest.mark.parametrize("budget", [1.0, 0.0], ids=["every-batch", "no-prediction"])
def test_prequential_new_classes_and_forgetting_reach_the_metrics(
    redis_client, tiny_backbone, budget: float
) -> None:
    """New classes and forgetting are counted whatever the prediction budget (the budget only
    rations the predictions behind the concept-drift signal)."""
    registry = CollectorRegistry()
    settings = TrainerSettings(
        kafka_bootstrap="unused:9092",
        redis_url="redis://unused",
        batch_size=4,
        prequential_budget=budget,
        snapshot_every_examples=8,
        snapshot_every_seconds=3600,
        batch_wait_seconds=3600,
        holdout_every=2,
        holdout_per_class=4,
        guardrail_margin=1.0,
    )
    monitor = TrainerDriftMonitor(TrainerDriftMetrics(registry), forgetting_every_seconds=0)
    trainer = Trainer(
        settings,
        tiny_backbone,
        SnapshotStore(redis_client),
        TrainerMetrics(registry),
        EventPublisher(lambda *args: None, "perennial.events", "test"),
        LearnerConfig(learner="lae", pet=LoRAConfig(rank=2, layers=(0, 1)), lr=1e-2),
        drift=monitor,
    )
    labels = ["animal", "plant"] * 8 + ["artifact", "animal", "plant", "artifact"] * 4
    trainer.deliver(
        [
            Incoming("t:0", i, Example("ad", str(i), TEXTS[label][i % 4], label, 1.0))
            for i, label in enumerate(labels)
        ]
    )
    trainer.work_once(timeout=0)
    assert monitor.drain(timeout=30)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"adapter": "ad", **labels})

    assert sample("perennial_trainer_new_classes_total") == 3
    predicted = sample("perennial_trainer_prequential_examples_total")
    assert predicted > 0 if budget else predicted == 0
    assert 0 <= sample("perennial_trainer_prequential_error_ratio") <= 1
    assert sample("perennial_trainer_drift_detections_total", signal="concept") is not None
    assert sample("perennial_trainer_guardrail_holds_total") is not None  # exported before any hold
    assert sample("perennial_trainer_stages") == 2  # artifact arrived after the first evaluations
    assert sample("perennial_trainer_accuracy_matrix_ratio", after_stage="1", stage="0") is not None
