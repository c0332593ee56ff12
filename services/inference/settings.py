"""The inference service's configuration: every `PERENNIAL_*` variable it reads, declared once."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from perennial.config import (
    GrpcSecuritySettings,
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    variable,
)
from services.inference.batching import BatchingConfig
from services.inference.cpus import CpuPinning
from services.inference.monitor import MonitorConfig
from services.inference.plane import ServerConfig, ServingConfig
from services.inference.predictionlog import PredictionLogConfig

_M = MonitorConfig


class InferenceSettings(ProcessSettings, RedisSettings, KafkaSettings, GrpcSecuritySettings):
    """The inference service's settings (`python -m services.inference --help` lists them)."""

    metrics_port: int = Field(
        9101, ge=0, le=65535, description="port of Prometheus /metrics (0: any free port)"
    )
    grpc_host: str = Field("0.0.0.0", description="listen address of the gRPC server")
    grpc_port: int = Field(8001, ge=0, le=65535, description="port of the gRPC server")
    rest_host: str = Field(
        "0.0.0.0", description="listen address of the REST (HTTP/JSON) server, same protocol"
    )
    rest_port: int = Field(
        8000, ge=0, le=65535, description="port of the REST server (0: any free port)"
    )
    grpc_workers: int = Field(
        ServerConfig.workers,
        ge=1,
        description="request threads of each transport = most concurrent requests on gRPC and "
        "on REST (beyond: RESOURCE_EXHAUSTED, HTTP 429)",
    )
    max_message_bytes: int = Field(
        ServerConfig.max_message_bytes,
        ge=1024,
        description="largest gRPC request or reply, largest REST request body (HTTP 413)",
    )
    max_batch_size: int = Field(
        BatchingConfig.max_batch_size,
        ge=1,
        description="rows per model call (dynamic batching); also the most rows one request may carry",
    )
    max_queue_delay_ms: float = Field(
        BatchingConfig.max_queue_delay_seconds * 1000,
        ge=0,
        description="longest wait for a batch to fill; spent only when more than one request was "
        "outstanding lately (a lone client never waits)",
    )
    max_queue_size: int = Field(
        BatchingConfig.max_queue_size,
        ge=1,
        description="requests waiting for the model; more are rejected with RESOURCE_EXHAUSTED",
    )
    adapter_memory_bytes: int = Field(
        ServingConfig.memory_bytes,
        ge=1,
        description="memory budget of resident adapter versions (LRU beyond it)",
    )
    max_text_chars: int = Field(
        ServingConfig.max_text_chars, ge=1, description="longest accepted text"
    )
    reconcile_seconds: float = Field(
        ServingConfig.reconcile_seconds,
        gt=0,
        description="compare served versions with the Redis heads this often (missed announcements)",
    )
    cpu_pinning: CpuPinning = Field(
        "auto",
        description="auto: with one intra-op thread (PERENNIAL_TORCH_THREADS=1) and CPUs of its "
        "own (its CPU set no larger than its cgroup CPU quota), the batch thread runs on one CPU "
        "and every other thread on the rest; off: the scheduler places every thread",
    )
    drain_seconds: float = Field(
        10.0, ge=0, description="grace period for in-flight requests on SIGTERM"
    )
    drift_max_adapters: int = Field(
        _M.max_adapters,
        ge=1,
        description="adapters whose drift is monitored at once (LRU beyond: an adapter that "
        "comes back starts afresh); ~0.8 MB each with MiniLM",
    )
    drift_input_reference: int = Field(
        _M.input_reference, ge=2, description="input drift: reference window (texts)"
    )
    drift_input_window: int = Field(
        _M.input_window, ge=2, description="input drift: test window (texts)"
    )
    drift_input_alpha: float = Field(
        _M.input_alpha, gt=0, lt=1, description="input drift: false-alarm probability per test"
    )
    drift_prediction_reference: int = Field(
        _M.prediction_reference,
        ge=2,
        description="prediction drift: reference window (predictions)",
    )
    drift_prediction_window: int = Field(
        _M.prediction_window, ge=2, description="prediction drift: test window (predictions)"
    )
    drift_prediction_alpha: float = Field(
        _M.prediction_alpha,
        gt=0,
        lt=1,
        description="prediction drift: false-alarm probability per test",
    )

    prediction_log: bool = Field(
        False,
        description="write every prediction to the prediction log (Kafka) and return its id",
    )
    prediction_log_topic: str = Field(
        PredictionLogConfig.topic, description="topic of the prediction log"
    )
    prediction_log_inputs: Literal["text", "sha256"] = Field(
        "text",
        description="log each input itself (learnable from feedback) or only its sha256",
    )
    prediction_log_queue_size: int = Field(
        PredictionLogConfig.queue_size,
        ge=1,
        description="requests waiting for the prediction log's producer; more are dropped (counted)",
    )
    kafka_bootstrap: str = Field(
        "", description="Kafka bootstrap servers, host:port[,host:port] (for the prediction log)"
    )

    @model_validator(mode="after")
    def _prediction_log_needs_kafka(self) -> Self:
        if self.prediction_log and not self.kafka_bootstrap:
            raise ValueError(
                f"{variable('prediction_log')} is on but {variable('kafka_bootstrap')} is not set"
            )
        return self

    def batching(self, cpus: frozenset[int] | None = None) -> BatchingConfig:
        return BatchingConfig(
            self.max_batch_size, self.max_queue_delay_ms / 1000, self.max_queue_size, cpus
        )

    def serving(self) -> ServingConfig:
        return ServingConfig(
            self.adapter_memory_bytes,
            self.max_text_chars,
            self.max_batch_size,
            self.reconcile_seconds,
            self.input_spec(),
        )

    def server(self) -> ServerConfig:
        return ServerConfig(self.grpc_workers, self.max_message_bytes)

    def monitor(self) -> MonitorConfig:
        return MonitorConfig(
            queue_size=self.drift_queue_size,
            max_adapters=self.drift_max_adapters,
            input_reference=self.drift_input_reference,
            input_window=self.drift_input_window,
            input_alpha=self.drift_input_alpha,
            prediction_reference=self.drift_prediction_reference,
            prediction_window=self.drift_prediction_window,
            prediction_alpha=self.drift_prediction_alpha,
        )

    def prediction_log_config(self) -> PredictionLogConfig:
        return PredictionLogConfig(
            self.prediction_log_topic,
            self.prediction_log_queue_size,
            self.prediction_log_inputs == "text",
        )
