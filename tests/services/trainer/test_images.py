"""The trainer core on the image backbone (in-process, real Redis and Kafka): tensor examples
are learned, held out and judged; the warm-up buffer of images survives a restart; a snapshot
of another backbone is refused record by record, never with a dead training thread."""

from __future__ import annotations

import re
import time

import pytest
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from perennial.codec import Example, Tensor
from perennial.learners import LearnerConfig, build_learner
from perennial.store import SnapshotStore, to_safetensors
from perennial_dev.localstack import create_topics
from services.trainer.deadletter import DeadLetters
from services.trainer.events import EventPublisher
from services.trainer.metrics import TrainerMetrics
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Incoming, Trainer
from tests.services.trainer.conftest import IN_PROCESS
from tests.services.trainer.test_limits import read_records

# a small first window, so the warm-up closes within the test
FSA = LearnerConfig(
    learner="fsa",
    projection_dim=64,
    warmup_examples=12,
    warmup_min_classes=2,
    warmup_min_count=4,
    warmup_cap=24,
    warmup_epochs=1,
)


@pytest.fixture(scope="module")
def image_backbone():
    from perennial.backbone import ImageBackbone

    return ImageBackbone.load(image_size=32)


def image(label: str, index: int) -> Tensor:
    """A grey 1×28×28 image: bright on the left for "Shirt", on the right for "Bag"."""
    generator = torch.Generator().manual_seed(index)
    pixels = torch.rand(1, 28, 28, generator=generator) * 0.3
    half = slice(0, 14) if label == "Shirt" else slice(14, 28)
    pixels[:, :, half] += 0.7
    return Tensor.from_array(pixels.numpy())


def make_trainer(redis_client, backbone, registry=None, **overrides) -> Trainer:
    fields = {**IN_PROCESS, "backbone": "image", "image_shape": (1, 28, 28), **overrides}
    return Trainer(
        TrainerSettings(**fields),
        backbone,
        SnapshotStore(redis_client),
        TrainerMetrics(registry or CollectorRegistry()),
        EventPublisher(lambda *_, **__: None, "perennial.events", "test"),
        FSA,
    )


def feed(trainer: Trainer, count: int, start: int = 0, adapter: str = "fashion") -> int:
    records = [
        Incoming(
            "t:0",
            i,
            Example(adapter, str(i), "", label, 1.0, image(label, i)),
            epoch=trainer._epochs.get("t:0", 0),
        )
        for i in range(start, start + count)
        for label in ["Shirt" if i % 2 else "Bag"]
    ]
    trainer.deliver(records)
    trainer.work_once(timeout=0)
    return start + count


def test_tensor_examples_are_learned_held_out_and_resume_with_their_buffer(
    redis_client, image_backbone, caplog
):
    registry = CollectorRegistry()
    trainer = make_trainer(
        redis_client, image_backbone, registry, holdout_every=2, guardrail_min_holdout=2
    )
    offset = feed(trainer, 8)
    learner = trainer.adapters["fashion"].learner
    assert all(x.shape == (1, 28, 28) for x in learner.buffer) and not learner.adapted
    inputs, labels = trainer.adapters["fashion"].reservoir.inputs({"Shirt", "Bag"})
    assert len(inputs) == 8 - len(learner.buffer) >= 2  # the second of each known class
    for held, label in zip(inputs, labels, strict=True):  # the very images, back from Redis
        assert any(
            torch.equal(held, torch.from_numpy(image(label, i).array().copy())) for i in range(8)
        )
    first = trainer.store.latest("fashion")
    assert first is not None and first.examples == len(learner.buffer)

    # a trainer that starts again continues from the snapshot: the buffered images come back
    again = make_trainer(redis_client, image_backbone, holdout_every=2, guardrail_min_holdout=2)
    restored = again._state("fashion", "t:0").learner
    assert len(restored.buffer) == len(learner.buffer)
    for mine, theirs in zip(learner.buffer, restored.buffer, strict=True):
        assert torch.equal(mine, theirs)

    with caplog.at_level("INFO", logger="services.trainer.worker"):
        feed(trainer, 24, start=offset)  # the window closes; the next snapshot is judged on images
    trainer.snapshot_all()
    assert trainer.adapters["fashion"].learner.adapted
    steps = [r.getMessage() for r in caplog.records if "PET warm-up step" in r.getMessage()]
    assert steps and re.search(r"step (\d+) of \1$", steps[-1])  # up to the last step
    latest = trainer.store.latest("fashion")
    assert latest.sequence > first.sequence and latest.examples > first.examples
    served = registry.get_sample_value(
        "perennial_trainer_served_holdout_accuracy_ratio", {"adapter": "fashion"}
    )
    assert served is not None and 0.0 <= served <= 1.0  # a verdict on the held-out images


def test_a_snapshot_of_another_backbone_is_refused_record_by_record(
    redis_client, tiny_backbone, image_backbone, kafka_broker
):
    """A text trainer meets an adapter whose snapshot is of images: each of its records is a
    dead letter (IncompatibleSnapshot, counted); the training thread and other adapters go on."""
    learner = build_learner(image_backbone, FSA)
    learner.learn([torch.rand(1, 28, 28) for _ in range(2)], ["Shirt", "Bag"])
    store = SnapshotStore(redis_client)
    store.publish(
        "fashion",
        to_safetensors(*learner.state()),
        parent=None,
        offsets={},
        examples=2,
        classes=learner.classes,
    )
    topic = f"dlq-{time.monotonic_ns()}"
    create_topics(kafka_broker.bootstrap, {topic: 1})
    registry = CollectorRegistry()
    trainer = Trainer(
        TrainerSettings(**{**IN_PROCESS, "batch_size": 2}),
        tiny_backbone,
        store,
        TrainerMetrics(registry),
        EventPublisher(lambda *_, **__: None, "perennial.events", "test"),
        LearnerConfig(learner="ranpac", projection_dim=16),
    )
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    trainer.dead_letters = DeadLetters(producer, topic, 512 * 1024, trainer.metrics, trainer.events)
    records = [
        Incoming("t:0", i, Example(adapter, str(i), "a small dog", "animal", 1.0))
        for i, adapter in enumerate(["fashion", "words", "fashion", "words"])
    ]
    trainer.deliver(records)
    trainer.work_once(timeout=0)
    assert "fashion" not in trainer.adapters and trainer.adapters["words"].learner.examples == 2
    dead = read_records(kafka_broker.bootstrap, topic, 2)
    producer.close()
    headers = [dict(r.headers) for r in dead]
    assert [h["perennial.error.class"] for h in headers] == [b"IncompatibleSnapshot"] * 2
    assert b"PERENNIAL_BACKBONE=image" in headers[0]["perennial.error.message"]
    assert (
        registry.get_sample_value(
            "perennial_trainer_records_dead_lettered_total", {"reason": "IncompatibleSnapshot"}
        )
        == 2
    )
    assert trainer.held("t:0") == 0  # nothing waits: the offsets can move past them
