"""A fresh topic, group and adapter per test, and trainers started as real processes."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from perennial import codec
from perennial.learners import LearnerConfig
from perennial.store import SnapshotStore
from perennial_dev.launch import Service, start_trainer
from perennial_dev.localstack import create_topics
from services.trainer.events import EventPublisher
from services.trainer.metrics import TrainerMetrics
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Trainer

# Deterministic CPU training: size-cut batches, snapshots by count only, no holdout.
DETERMINISTIC = {
    "PERENNIAL_BATCH_SIZE": 8,
    "PERENNIAL_BATCH_WAIT_SECONDS": "inf",
    "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 32,
    "PERENNIAL_SNAPSHOT_EVERY_SECONDS": "inf",
    "PERENNIAL_HOLDOUT_EVERY": 0,
    "PERENNIAL_CHECKPOINT_EVERY_SECONDS": 0,  # every version a checkpoint: the chain is exact
    "PERENNIAL_TORCH_THREADS": 1,
    "PERENNIAL_RETAIN_BYTES": 1 << 30,  # the tests read every version of the lineage
    "PERENNIAL_WARMUP_BACKGROUND": "false",  # FSA's warm-up in line: the PET at a fixed offset
}
LABELS = ("noun.animal", "noun.plant", "noun.artifact")


# an in-process trainer: no Kafka or Redis URL of its own, small batches, snapshots by count
IN_PROCESS = {
    "kafka_bootstrap": "unused:9092",
    "redis_url": "redis://unused",
    "batch_size": 4,
    "snapshot_every_examples": 8,
    "snapshot_every_seconds": 3600,
    "batch_wait_seconds": 3600,
    "holdout_every": 0,
    "warmup_background": False,  # FSA's warm-up in line: learning is a function of the calls
}


def in_process_trainer(
    redis_client, backbone, config: LearnerConfig, send=None, registry=None, **overrides
) -> Trainer:
    """A trainer core on the test's Redis, cut by counts only: batches of 4, a snapshot every 8
    examples, no holdout, FSA's warm-up in line (`overrides` are `TrainerSettings` fields)."""
    return Trainer(
        TrainerSettings(**{**IN_PROCESS, **overrides}),
        backbone,
        SnapshotStore(redis_client),
        TrainerMetrics(registry or CollectorRegistry()),
        EventPublisher(
            send if send is not None else (lambda *_, **__: None), "perennial.events", "test"
        ),
        config,
    )


def examples(adapter: str, count: int, start: int = 0) -> list[codec.Example]:
    return [
        codec.Example(
            adapter,
            str(i),
            f"example number {i} about {LABELS[i % 3].split('.')[1]}",
            LABELS[i % 3],
            1_700_000_000.0 + i,
        )
        for i in range(start, start + count)
    ]


class Stream:
    """A test's own topics and adapter on the shared broker, with a producer."""

    def __init__(self, bootstrap: str, redis_url: str, workdir) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.bootstrap, self.redis_url, self.workdir = bootstrap, redis_url, workdir
        self.topic, self.adapter = f"examples.{suffix}", f"adapter-{suffix}"
        self.settings = {
            "PERENNIAL_TOPIC": self.topic,
            "PERENNIAL_DEAD_LETTER_TOPIC": f"{self.topic}.dlq",
            "PERENNIAL_EVENTS_TOPIC": f"{self.topic}.events",
            "PERENNIAL_GROUP_ID": f"group-{suffix}",
        }
        create_topics(bootstrap, {self.topic: 1, f"{self.topic}.dlq": 1, f"{self.topic}.events": 1})
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024
        )
        self.started: list[Service] = []
        self.runs = 0

    def trainer(self, **settings) -> Service:
        self.runs += 1
        service = start_trainer(
            self.workdir,
            bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            log_name=f"trainer-{self.runs}.log",
            **{**self.settings, **settings},
        )
        self.started.append(service)
        return service

    def send(self, values: list[bytes], key: bytes | None = None) -> None:
        for value in values:
            self.producer.send(
                self.topic, key=key if key is not None else self.adapter.encode(), value=value
            )
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()
        for service in self.started:
            service.stop()


@pytest.fixture
def stream(kafka_broker, redis_server, tmp_path):
    stream = Stream(kafka_broker.bootstrap, redis_server.url, tmp_path)
    yield stream
    stream.close()
