"""Fixtures for the inference service: LAE learners on the tiny backbone, snapshots in real
Redis, and the gRPC and REST servers in-process on the same operations (real sockets, real
tritonclient calls)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from perennial.grpc_security import ServerSecurity
from perennial.learners import LearnerConfig
from perennial.learners.lae import LAELearner
from perennial.pet import LoRAConfig
from perennial.store import Manifest, SnapshotStore, to_safetensors
from perennial_dev.localstack import free_port
from services.inference.batching import Batcher, BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.plane import DataPlane, ServerConfig, ServingConfig
from services.inference.rest import RestServer
from services.inference.server import InferenceServicer, build_server, set_health

TEXTS = ["a small dog", "a tall tree", "an old house"]
LABELS = ["animal", "plant", "artifact"]


def make_learner(backbone, seed: int = 0, rank: int = 2) -> LAELearner:
    config = LearnerConfig(
        learner="lae", pet=LoRAConfig(rank=rank, layers=(0, 1)), lr=1e-2, seed=seed
    )
    learner = LAELearner(backbone, config)
    learner.learn(TEXTS, LABELS)
    return learner


def publish(
    store: SnapshotStore, learner, adapter: str = "demo", parent: Manifest | None = None
) -> Manifest:
    return store.publish(
        adapter,
        to_safetensors(*learner.state()),
        parent=parent,
        offsets={},
        examples=learner.examples,
        classes=learner.classes,
        event_times=[0.0],
    )


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


@dataclass
class Service:
    """An in-process inference server and its parts."""

    address: str
    store: SnapshotStore
    servicer: InferenceServicer
    plane: DataPlane
    health: health.HealthServicer
    registry: CollectorRegistry
    server: grpc.Server
    rest: RestServer
    stopped: list = field(default_factory=list)

    @property
    def rest_address(self) -> str:
        return f"127.0.0.1:{self.rest.port}"

    def ready(self) -> Service:
        self.servicer.attach(self.plane)
        set_health(self.health, True)
        return self

    def client(self, **kwargs) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.address, **kwargs)

    def http_client(self, **kwargs) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(self.rest_address, **kwargs)

    def infer(self, texts=TEXTS, model="demo", version="", outputs=None, **kwargs):
        requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
        return self.client().infer(
            model, [text_input(texts)], model_version=version, outputs=requested, **kwargs
        )

    def sample(self, name: str, labels: dict | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def gate_model(self) -> threading.Event:
        """Hold every batch until the returned event is set (to fill the queue on purpose)."""
        gate = threading.Event()
        original = self.servicer.batcher
        original.stop()

        def held(work):
            gate.wait()
            return original._run(work)

        self.servicer.batcher = Batcher(
            held, original.config, original.metrics, original._on_executed
        ).start()
        return gate


@pytest.fixture
def learner(tiny_backbone) -> LAELearner:
    return make_learner(tiny_backbone)


@pytest.fixture
def start_service(redis_client, tiny_backbone) -> Iterator[Callable[..., Service]]:
    """Start an in-process server: `start_service(batching=..., serving=..., security=...)`."""
    started: list[Service] = []

    def start(
        batching: BatchingConfig = BatchingConfig(max_queue_delay_seconds=0.005),
        serving: ServingConfig = ServingConfig(),
        security: ServerSecurity = ServerSecurity(),
        server_config: ServerConfig = ServerConfig(workers=16),
        backbone=None,
        tracing=(),
    ) -> Service:
        registry = CollectorRegistry()
        metrics = InferenceMetrics(registry)
        servicer, health_servicer = InferenceServicer(metrics, batching), health.HealthServicer()
        set_health(health_servicer, False)
        server = build_server(servicer, health_servicer, server_config, security, tracing)
        port = security.add_port(server, f"127.0.0.1:{free_port()}")
        server.start()
        rest = RestServer(servicer.operations, server_config, security)
        rest.start("127.0.0.1", 0)
        store = SnapshotStore(redis_client)
        plane = DataPlane(backbone or tiny_backbone, store, metrics, serving)
        service = Service(
            f"127.0.0.1:{port}", store, servicer, plane, health_servicer, registry, server, rest
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.server.stop(grace=None)
        service.rest.stop(grace=0)
        if service.servicer.batcher is not None:
            service.servicer.batcher.stop(timeout=5)


@pytest.fixture
def service(start_service) -> Service:
    return start_service()
