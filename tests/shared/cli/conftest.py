"""Fixtures of the CLI tests: real trainer control servers in-process, a kubeconfig for the
recording Kubernetes API endpoint of tests/deploy, and a runner for `perennial`."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health
from kafka import TopicPartition
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from perennial.cli import app
from perennial.codec import Example
from perennial.grpc_security import ServerSecurity
from perennial.learners import LearnerConfig
from perennial.pet import LoRAConfig
from perennial.store import SnapshotStore
from perennial_dev.localstack import create_topics
from services.trainer.control import ControlServicer, build_control_server
from services.trainer.events import EventPublisher
from services.trainer.ingest import Ingest
from services.trainer.metrics import TrainerMetrics
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Incoming, Trainer
from tests.deploy.conftest import RecordingEndpoint, api_endpoint  # noqa: F401 (a fixture)

TOKEN = "s3cret"
TEXTS = {
    "animal": ["a small dog", "a big cat", "a red fox", "a grey wolf"],
    "plant": ["a tall tree", "a green fern", "a wild rose", "a young oak"],
}


@dataclass
class TrainerReplica:
    """One trainer with its control API on 127.0.0.1:`port`, owning `partition` of `topic`."""

    trainer: Trainer
    ingest: Ingest
    server: grpc.Server
    port: int
    topic: str
    partition: int
    adapter: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _replica(
    kafka_broker, redis_client, backbone, topic: str, partition: int, adapter: str
) -> TrainerReplica:
    settings = TrainerSettings(
        kafka_bootstrap=kafka_broker.bootstrap,
        redis_url="redis://unused",  # the store below is given its client
        topic=topic,
        group_id=f"group-{topic}",
        batch_size=4,
        snapshot_every_examples=8,
        snapshot_every_seconds=3600,
        batch_wait_seconds=3600,
        holdout_every=0,
    )
    metrics = TrainerMetrics(CollectorRegistry())
    trainer = Trainer(
        settings,
        backbone,
        SnapshotStore(redis_client),
        metrics,
        EventPublisher(lambda topic, key, value: None, "perennial.events", "test"),
        LearnerConfig(learner="lae", pet=LoRAConfig(rank=2, layers=(0, 1)), lr=1e-2),
    )
    # A real consumer given its partition directly: the control API reports its assignment.
    # It is never polled, so nothing is dead-lettered and the producer is not needed.
    ingest = Ingest(settings, trainer, metrics, None, trainer.events)
    ingest.consumer.assign([TopicPartition(topic, partition)])
    labels = ["animal", "plant"] * 4  # 8 examples: one snapshot
    trainer.deliver(
        [
            Incoming(
                f"{topic}:{partition}", i, Example(adapter, str(i), TEXTS[label][i % 4], label, 1.0)
            )
            for i, label in enumerate(labels)
        ]
    )
    trainer.work_once(timeout=0)
    server = build_control_server(
        ControlServicer(trainer, ingest),
        health.HealthServicer(),
        interceptors=ServerSecurity(token=TOKEN).interceptors(),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return TrainerReplica(trainer, ingest, server, port, topic, partition, adapter)


@pytest.fixture
def replicas(kafka_broker, redis_client, tiny_backbone) -> Iterator[list[TrainerReplica]]:
    """Two trainers of one release: partition 0 learns adapter "wordnet", partition 1
    "tickets"; each has a snapshot, its training thread and its control server running."""
    topic = f"examples.{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker.bootstrap, {topic: 2})
    started = [
        _replica(kafka_broker, redis_client, tiny_backbone, topic, partition, adapter)
        for partition, adapter in ((0, "wordnet"), (1, "tickets"))
    ]
    stop = threading.Event()
    threads = [
        threading.Thread(target=r.trainer.run, args=(stop,), name=f"training-{r.partition}")
        for r in started
    ]
    for thread in threads:
        thread.start()
    try:
        yield started
    finally:
        stop.set()
        for replica, thread in zip(started, threads, strict=True):
            replica.server.stop(0).wait(5)
            thread.join(10)
            replica.ingest.consumer.close(autocommit=False)


def write_kubeconfig(
    endpoint: RecordingEndpoint, path: Path, namespace: str | None = "ml", port: int | None = None
) -> Path:
    """A kubeconfig whose current context is the recording endpoint (token auth, its CA), or
    another `port` of 127.0.0.1."""
    context = {"cluster": "test", "user": "operator"}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {
                            "server": f"https://127.0.0.1:{port or endpoint.port}",
                            "certificate-authority": str(endpoint.ca_file),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": "operator-token"}}],
                "contexts": [{"name": "test", "context": context}],
                "current-context": "test",
            }
        )
    )
    return path


@pytest.fixture
def perennial(monkeypatch, tmp_path):
    """perennial(*args, env=None) -> click Result: the CLI in-process, with no variable of the
    caller's environment leaking in (trainer target, token, kubeconfig, cluster)."""
    for name in (
        "PERENNIAL_TRAINER_TARGET",
        "PERENNIAL_AUTH_TOKEN",
        "PERENNIAL_AUTH_TOKEN_FILE",
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config of whoever runs the tests
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    return run
