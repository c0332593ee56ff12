"""The trainer's configuration: every `PERENNIAL_*` variable it reads, declared once."""

from __future__ import annotations

import socket
from functools import cached_property
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, model_validator

from perennial.config import (
    GrpcSecuritySettings,
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    variable,
)
from perennial.learners import DEFAULT_LEARNER, LearnerConfig
from perennial.learners.config import LEARNER_NAMES
from perennial.pet import METHODS
from services.trainer.guardrail import GuardrailConfig

if TYPE_CHECKING:
    from perennial.learners.fsa import FirstSessionLearner

_G = GuardrailConfig
Learner = Literal[LEARNER_NAMES]  # type: ignore[valid-type]
PET = Literal[tuple(sorted(METHODS))]  # type: ignore[valid-type]


class TrainerSettings(ProcessSettings, RedisSettings, KafkaSettings, GrpcSecuritySettings):
    """The trainer's settings (`python -m services.trainer --help` lists them)."""

    kafka_bootstrap: str = Field(description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        description="consumer-group session timeout: a dead trainer's partitions move after this",
    )
    kafka_heartbeat_interval_ms: int = Field(
        3000,
        ge=100,
        description="consumer-group heartbeat interval (below a third of the session timeout)",
    )
    kafka_fetch_max_wait_ms: int = Field(
        50,
        ge=1,
        le=5000,
        description="longest a fetch waits at the broker for records: brokers that answer "
        "only at this deadline (Tansu) add up to it to every record's freshness",
    )
    topic: str = Field("perennial.examples", description="examples topic")
    dead_letter_topic: str = Field(
        "perennial.examples.dlq", description="dead letters, with the reason in headers"
    )
    events_topic: str = Field(
        "perennial.events", description="lifecycle events (perennial.v1.Event)"
    )
    group_id: str = Field("perennial-trainer", description="consumer group of the trainer replicas")
    feedback: bool = Field(
        False,
        description="join feedback with the prediction log and learn it (docs/QUICKSTART.md)",
    )
    feedback_topic: str = Field(
        "perennial.feedback", description="feedback {prediction_id, label} from clients"
    )
    predictions_topic: str = Field(
        "perennial.predictions", description="the inference service's prediction log"
    )
    feedback_window_seconds: float = Field(
        86400.0,
        gt=0,
        description="feedback later than this after its prediction is dead-lettered (LateFeedback)",
    )
    feedback_wait_seconds: float = Field(
        10.0,
        ge=0,
        description="feedback whose prediction is not read yet waits this long (past the "
        "prediction's time) before it is dead-lettered (UnknownPrediction)",
    )
    feedback_max_predictions: int = Field(
        100_000,
        ge=1,
        description="logged predictions held for the join; beyond, the oldest are dropped (counted)",
    )
    learner: Learner = Field(DEFAULT_LEARNER, description="continual learner (docs/LEARNING.md)")
    pet: PET = Field("lora", description="PET method of learners that adapt one")
    projection_dim: int = Field(
        LearnerConfig.projection_dim,
        ge=1,
        description="fsa and ranpac: random-projection width M of the ridge head (its M×M float64 "
        "statistics are in memory and in every snapshot: 8 MiB at 1024, 32 MiB at 2048)",
    )
    warmup_examples: int = Field(
        LearnerConfig.warmup_examples,
        ge=1,
        description="fsa: examples of the PET's warm-up window (it closes once it also holds "
        f"{LearnerConfig.warmup_min_classes} classes, at 4 times as many examples at most)",
    )
    warmup_background: bool = Field(
        True,
        description="fsa: train the PET on a thread of its own while the adapter goes on learning "
        "with frozen features and publishing fresh versions (false: learning waits for it); the "
        "learned state is the same either way",
    )
    warmup_cpu_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="fsa, background warm-up: the share of a core its thread may use while "
        "micro-batches are being learned (it sleeps in proportion to its CPU time), so learning "
        "keeps the CPU it needs and versions stay fresh; on an idle stream it runs at full speed",
    )
    warmup_yield_seconds: float = Field(
        0.25,
        gt=0,
        description="fsa, background warm-up: while learning runs behind the stream (a "
        "micro-batch's oldest record waited longer than this), the warm-up takes a tenth of its "
        "CPU share, so learning catches up first",
    )
    warmup_cache_mb: int = Field(
        256,
        ge=0,
        description="fsa, background warm-up: frozen forwards of the micro-batches learned "
        "meanwhile kept per adapter (about 40 KB per 20-token text), so the warm-up's catch-up "
        "runs only the last blocks for them; beyond, it runs the whole backbone again",
    )
    seed: int = Field(0, description="seed of new adapters' initialisation")
    device: str = Field("auto", description="where the backbone runs: auto, cpu, cuda, cuda:N")
    batch_size: int = Field(16, ge=1, description="micro-batch size")
    batch_wait_seconds: float = Field(
        0.1,
        ge=0,
        description="flush a partial batch once its oldest record has waited this long (inf: never)",
    )
    snapshot_every_examples: int = Field(64, ge=1, description="snapshot cadence by examples")
    snapshot_every_seconds: float = Field(
        0.25,
        gt=0,
        description="snapshot cadence by time, when something new was learned (inf: never); a "
        "snapshot is a small serving version (the solved head and the PET)",
    )
    checkpoint_every_seconds: float = Field(
        30.0,
        ge=0,
        description="a snapshot also stores the learner's whole state this often (0: every "
        "snapshot; and on shutdown and rebalance); Kafka commits and restarts follow checkpoints",
    )
    retain_versions: int = Field(
        100,
        ge=1,
        description="versions kept per adapter (plus head, candidate, their parents and the "
        "checkpoints they resume from)",
    )
    max_pending: int = Field(
        2048, ge=1, description="records buffered before partitions are paused"
    )
    max_record_bytes: int = Field(1 << 20, ge=1, description="larger records are dead-lettered")
    dead_letter_max_bytes: int = Field(
        512 * 1024,
        ge=8192,
        le=1 << 20,
        description="dead letters larger than this are sent truncated, with their size in a header "
        "(below the producer's 1 MiB request limit)",
    )
    max_adapters: int = Field(
        128,
        ge=1,
        description="adapters kept in memory; beyond, the least recently used is snapshotted and "
        "dropped, and reloads on demand",
    )
    max_classes: int = Field(
        256, ge=2, description="classes per adapter; examples of further labels are dead-lettered"
    )
    retain_bytes: int = Field(
        64 << 20,
        ge=1,
        description="snapshot bytes kept per adapter in Redis (head, candidate and their parents "
        "always stay)",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="replicas that must hold a snapshot before its offsets are committed "
        "(Redis WAIT; 1 or more with Sentinel, so a failover loses no snapshot)",
    )
    redis_wait_timeout_ms: int = Field(
        5000, ge=1, description="how long a snapshot waits for those replicas"
    )
    stall_seconds: float = Field(
        300.0,
        gt=0,
        description="the training thread or the poll loop silent this long: health NOT_SERVING",
    )
    prequential_budget: float = Field(
        0.05,
        ge=0,
        description="share of learning time spent predicting before learning (drift signal); 1: every batch, 0: off",
    )
    forgetting_every_seconds: float = Field(
        30.0, ge=0, description="evaluate the holdout for the accuracy matrix at most this often"
    )
    holdout_every: int = Field(
        _G.every, ge=0, description="hold out every n-th example per class (0: guardrail off)"
    )
    holdout_per_class: int = Field(_G.per_class, ge=1, description="holdout texts kept per class")
    guardrail_margin: float = Field(
        _G.margin, ge=0, le=1, description="tolerated holdout accuracy drop on known classes"
    )
    guardrail_min_holdout: int = Field(
        _G.min_holdout,
        ge=0,
        description="fewer holdout texts than this: no verdict, the candidate is promoted",
    )
    control_host: str = Field("0.0.0.0", description="listen address of the control API")
    control_port: int = Field(
        50051, ge=0, le=65535, description="port of the control API and gRPC health"
    )
    kubernetes_events: bool = Field(
        True, description="record Kubernetes Events on the trainer's Pod"
    )

    @model_validator(mode="after")
    def _kafka_group_timings(self) -> Self:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                f"{variable('kafka_heartbeat_interval_ms')}={self.kafka_heartbeat_interval_ms} must be at most a "
                f"third of {variable('kafka_session_timeout_ms')}={self.kafka_session_timeout_ms}"
            )
        return self

    @cached_property
    def guardrail(self) -> GuardrailConfig:
        return GuardrailConfig(
            self.holdout_every,
            self.holdout_per_class,
            self.guardrail_margin,
            self.guardrail_min_holdout,
        )

    @property
    def source(self) -> str:
        """Names this replica in events: the Pod name, else the host name."""
        return self.pod_name or socket.gethostname()

    def schedule_warm_up(self, learner: FirstSessionLearner) -> None:
        """How an FSA learner runs its PET warm-up in this trainer (the learned state is the
        same whatever these say)."""
        learner.background = self.warmup_background
        learner.cpu_share = self.warmup_cpu_share
        learner.cache_bytes = self.warmup_cache_mb << 20

    def learner_config(self) -> LearnerConfig:
        return LearnerConfig(
            learner=self.learner,
            pet=METHODS[self.pet].config(),
            seed=self.seed,
            projection_dim=self.projection_dim,
            warmup_examples=self.warmup_examples,
            warmup_cap=4 * self.warmup_examples,
        )
