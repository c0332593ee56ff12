"""Run the trainer and inference services as separate processes (demo and end-to-end tests).

Each service is started as `python -m services.<name>` with its configuration in
`PERENNIAL_*` environment variables, exactly as a container would run it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from perennial.v1 import trainer_pb2, trainer_pb2_grpc
from perennial_dev.localstack import ManagedProcess, free_port

STARTUP_SECONDS = 120.0  # loading the backbone on a busy 2-core machine


@dataclass
class Service:
    """One of our services running as a process, with its ports."""

    process: ManagedProcess
    metrics_port: int
    grpc_port: int | None = None
    rest_port: int | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def stop(self, timeout: float = 20) -> int:
        return self.process.stop(timeout)


def _environment(settings: dict[str, object]) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update({key: str(value) for key, value in settings.items()})
    environment.setdefault("PERENNIAL_TORCH_THREADS", "1")
    environment.setdefault("HF_HUB_OFFLINE", "1")
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    return environment


@contextlib.contextmanager
def _stopped_on_failure(process: ManagedProcess) -> Iterator[None]:
    """Stop `process` if start-up fails or is interrupted (Ctrl-C while the backbone loads)."""
    try:
        yield
    except BaseException:
        process.stop()
        raise


def start_trainer(
    workdir: Path,
    *,
    bootstrap: str,
    redis_url: str,
    log_name: str = "trainer.log",
    **settings: object,
) -> Service:
    """Start the trainer; ready once its control API's gRPC health says SERVING."""
    metrics_port, control_port = free_port(), free_port()
    environment = _environment(
        {
            "PERENNIAL_KAFKA_BOOTSTRAP": bootstrap,
            "PERENNIAL_REDIS_URL": redis_url,
            "PERENNIAL_METRICS_PORT": metrics_port,
            "PERENNIAL_CONTROL_HOST": "127.0.0.1",
            "PERENNIAL_CONTROL_PORT": control_port,
            # Tansu holds a group join ~session/2: short timings keep rebalances quick locally
            "PERENNIAL_KAFKA_SESSION_TIMEOUT_MS": 6000,
            "PERENNIAL_KAFKA_HEARTBEAT_INTERVAL_MS": 1000,
            **settings,
        }
    )
    process = ManagedProcess(
        [sys.executable, "-m", "services.trainer"],
        workdir / log_name,
        name="trainer",
        env=environment,
    )
    service = Service(process, metrics_port, control_port)
    with _stopped_on_failure(process):
        _wait_serving(service, "trainer gRPC health SERVING")
    return service


def wait_consuming(trainer: Service, topic: str, timeout: float = 60.0) -> None:
    """Wait until the trainer has a partition of `topic` (its consumer group joined): records
    produced before wait for the join, seconds for a new group on the local broker."""
    with grpc.insecure_channel(trainer.grpc_address) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)

        def consuming() -> bool:
            reply = stub.GetStatus(trainer_pb2.GetStatusRequest(), timeout=1)
            return any(key.rpartition(":")[0] == topic for key in reply.partitions)

        trainer.process.wait_ready(consuming, timeout, f"the trainer consuming {topic}")


def _wait_serving(service: Service, what: str) -> None:
    with grpc.insecure_channel(service.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        service.process.wait_ready(serving, STARTUP_SECONDS, what)


def start_inference(
    workdir: Path, *, redis_url: str, log_name: str = "inference.log", **settings: object
) -> Service:
    """Start the inference service (gRPC and REST); ready once gRPC health says SERVING."""
    metrics_port, grpc_port, rest_port = free_port(), free_port(), free_port()
    environment = _environment(
        {
            "PERENNIAL_REDIS_URL": redis_url,
            "PERENNIAL_METRICS_PORT": metrics_port,
            "PERENNIAL_GRPC_HOST": "127.0.0.1",
            "PERENNIAL_GRPC_PORT": grpc_port,
            "PERENNIAL_REST_HOST": "127.0.0.1",
            "PERENNIAL_REST_PORT": rest_port,
            **settings,
        }
    )
    process = ManagedProcess(
        [sys.executable, "-m", "services.inference"],
        workdir / log_name,
        name="inference",
        env=environment,
    )
    service = Service(process, metrics_port, grpc_port, rest_port)
    with _stopped_on_failure(process):
        _wait_serving(service, "inference gRPC health SERVING")
    return service
