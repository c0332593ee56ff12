"""The trainer's consume → learn → snapshot → commit loop.

Exactly-once effect per example: every adapter's manifest records, per
partition, the offset after the last example it applied, and a record whose
offset is below its adapter's manifest offset is skipped. The Kafka commit
follows each round of snapshots and never passes an example that is not in
some snapshot, so on start or rebalance the consumer resumes from the
committed offset (the manifests' offsets, or earlier), and a crash anywhere
re-reads but never re-applies or loses an example.

Micro-batches are cut by size (`batch_size`), so a replay after a crash sees the
same batches as the uninterrupted run; a partial batch is flushed only after
`batch_wait_seconds` without new examples (set it to inf for strict determinism).

kafka-python runs rebalance callbacks on its network thread, where blocking
Kafka calls are not allowed: the callbacks touch only Redis and local state.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from perennial import codec
from perennial.backbone import TextBackbone
from perennial.config import env
from perennial.learner import LAELearner, LearnerConfig
from perennial.metrics import TrainerMetrics
from perennial.store import Manifest, SnapshotStore, StaleParent, from_safetensors, to_safetensors

log = logging.getLogger("perennial.trainer")


@dataclass(frozen=True)
class TrainerSettings:
    kafka_bootstrap: str
    redis_url: str
    topic: str = "perennial.examples"
    dead_letter_topic: str = "perennial.examples.dlq"
    group_id: str = "perennial-trainer"
    batch_size: int = 16
    batch_wait_seconds: float = 2.0
    snapshot_every_examples: int = 64
    snapshot_every_seconds: float = 5.0
    seed: int = 0

    @classmethod
    def from_env(cls) -> TrainerSettings:
        return cls(
            kafka_bootstrap=env("PERENNIAL_KAFKA_BOOTSTRAP"),
            redis_url=env("PERENNIAL_REDIS_URL"),
            topic=env("PERENNIAL_TOPIC", cls.topic),
            dead_letter_topic=env("PERENNIAL_DEAD_LETTER_TOPIC", cls.dead_letter_topic),
            group_id=env("PERENNIAL_GROUP_ID", cls.group_id),
            batch_size=env("PERENNIAL_BATCH_SIZE", cls.batch_size, int),
            batch_wait_seconds=env("PERENNIAL_BATCH_WAIT_SECONDS", cls.batch_wait_seconds, float),
            snapshot_every_examples=env("PERENNIAL_SNAPSHOT_EVERY_EXAMPLES", cls.snapshot_every_examples, int),
            snapshot_every_seconds=env("PERENNIAL_SNAPSHOT_EVERY_SECONDS", cls.snapshot_every_seconds, float),
            seed=env("PERENNIAL_SEED", cls.seed, int),
        )


def _partition_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass
class _Pending:
    example: codec.Example
    partition: str
    offset: int


@dataclass
class AdapterState:
    """One adapter's learner and what it has applied but not yet snapshotted."""

    learner: LAELearner
    manifest: Manifest | None
    applied: dict[str, int]  # partition key -> next offset to apply
    pending: list[_Pending] = field(default_factory=list)
    new_event_times: list[float] = field(default_factory=list)
    last_arrival: float = 0.0

    @property
    def dirty(self) -> bool:
        return bool(self.new_event_times)


class Trainer:
    def __init__(
        self,
        settings: TrainerSettings,
        backbone: TextBackbone,
        store: SnapshotStore,
        metrics: TrainerMetrics,
        learner_config: LearnerConfig | None = None,
    ) -> None:
        self.settings = settings
        self.backbone = backbone
        self.store = store
        self.metrics = metrics
        self.learner_config = learner_config or LearnerConfig(seed=settings.seed)
        self.adapters: dict[str, AdapterState] = {}
        self._last_snapshot = time.monotonic()
        self._since_snapshot = 0
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self.producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_records=max(s.batch_size * 4, 64),
            max_poll_interval_ms=300_000,
        )
        self.consumer.subscribe([s.topic], listener=_Rebalance(self))
        log.info("consuming", extra={"fields": {"topic": s.topic, "group": s.group_id}})
        try:
            while not stop.is_set():
                self.poll_once()
            self.snapshot_all()
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close()

    def poll_once(self, timeout_ms: int = 1000) -> None:
        # ~1 s: kafka-python 3.0.12 may discard a group join whose poll times out between
        # JoinGroup and SyncGroup; short polls make that (a 3 s penalty) common.
        # poll() returns as soon as records arrive, so this costs no latency.
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                self._accept(record)
        self._train_ready()
        if time.monotonic() - self._last_snapshot >= self.settings.snapshot_every_seconds:
            self.snapshot_all()

    # -- ingestion -----------------------------------------------------------------------
    def _accept(self, record) -> None:
        partition = _partition_key(record.topic, record.partition)
        try:
            example = codec.decode(record.value, key=record.key, timestamp_ms=record.timestamp)
        except codec.DecodeError as error:
            self._dead_letter(record, error)
            return
        state = self._state(example.adapter)
        if record.offset < state.applied.get(partition, 0):
            self.metrics.skipped.labels(example.adapter).inc()
            return
        state.pending.append(_Pending(example, partition, record.offset))
        state.last_arrival = time.monotonic()

    def _dead_letter(self, record, error: codec.DecodeError) -> None:
        headers = [
            ("perennial.error.class", error.reason.encode()),
            ("perennial.error.message", str(error).encode()),
            ("perennial.source.topic", record.topic.encode()),
            ("perennial.source.partition", str(record.partition).encode()),
            ("perennial.source.offset", str(record.offset).encode()),
        ]
        self.producer.send(
            self.settings.dead_letter_topic, key=record.key, value=record.value, headers=headers
        ).get(timeout=10)
        self.metrics.dead_lettered.labels(error.reason).inc()
        log.warning(
            "dead-lettered a record",
            extra={"fields": {"reason": error.reason, "error": str(error), "offset": record.offset}},
        )

    def _state(self, adapter: str) -> AdapterState:
        state = self.adapters.get(adapter)
        if state is None:
            state = self.adapters[adapter] = self._load(adapter)
        return state

    def _load(self, adapter: str) -> AdapterState:
        manifest = self.store.head(adapter)
        if manifest is None:
            log.info("new adapter", extra={"fields": {"adapter": adapter}})
            return AdapterState(LAELearner(self.backbone, self.learner_config), None, {})
        manifest, blob = self.store.fetch(adapter, manifest.version)
        learner = LAELearner.from_state(self.backbone, *from_safetensors(blob))
        log.info(
            "resumed adapter",
            extra={"fields": {"adapter": adapter, "version": manifest.version, "offsets": manifest.offsets}},
        )
        return AdapterState(learner, manifest, dict(manifest.offsets))

    # -- learning ------------------------------------------------------------------------
    def _train_ready(self) -> None:
        now = time.monotonic()
        for adapter, state in self.adapters.items():
            while len(state.pending) >= self.settings.batch_size:
                self._step(adapter, state, self.settings.batch_size)
            idle = now - state.last_arrival >= self.settings.batch_wait_seconds
            if state.pending and idle:
                self._step(adapter, state, len(state.pending))

    def _step(self, adapter: str, state: AdapterState, size: int) -> None:
        batch, state.pending = state.pending[:size], state.pending[size:]
        started = time.perf_counter()
        loss = state.learner.learn([p.example.text for p in batch], [p.example.label for p in batch])
        self.metrics.step_duration.observe(time.perf_counter() - started)
        self.metrics.loss.labels(adapter).set(loss)
        self.metrics.examples.labels(adapter).inc(len(batch))
        self.metrics.classes.labels(adapter).set(len(state.learner.classes))
        for item in batch:
            state.applied[item.partition] = item.offset + 1
            state.new_event_times.append(item.example.event_time)
        self._since_snapshot += len(batch)
        if self._since_snapshot >= self.settings.snapshot_every_examples:
            self.snapshot_all()

    # -- snapshots and commits -------------------------------------------------------------
    def snapshot_all(self, commit: bool = True) -> None:
        """Publish every adapter with unsnapshotted examples, then commit Kafka offsets."""
        for adapter, state in list(self.adapters.items()):
            if state.dirty:
                self._snapshot(adapter, state)
        self._last_snapshot = time.monotonic()
        self._since_snapshot = 0
        if commit:
            self._commit()

    def _snapshot(self, adapter: str, state: AdapterState) -> None:
        started = time.perf_counter()
        tensors, metadata = state.learner.state()
        try:
            manifest = self.store.publish(
                adapter,
                to_safetensors(tensors, metadata),
                parent=state.manifest,
                offsets=state.applied,
                examples=state.learner.examples,
                classes=state.learner.classes,
                metrics={"steps": state.learner.steps},
                event_times=state.new_event_times,
            )
        except StaleParent as error:
            log.error("fenced out: another trainer wrote this adapter; reloading", extra={"fields": {
                "adapter": adapter, "error": str(error)}})
            del self.adapters[adapter]
            return
        state.manifest = manifest
        state.new_event_times = []
        self.metrics.snapshots.labels(adapter).inc()
        self.metrics.snapshot_sequence.labels(adapter).set(manifest.sequence)
        self.metrics.snapshot_duration.observe(time.perf_counter() - started)
        log.info("snapshot published", extra={"fields": {
            "adapter": adapter, "version": manifest.version, "examples": manifest.examples}})

    def _commit(self) -> None:
        """Commit, per partition, the first offset some adapter has not yet snapshotted."""
        offsets = {}
        for tp in self.consumer.assignment():
            key = _partition_key(tp.topic, tp.partition)
            pending = [p.offset for s in self.adapters.values() for p in s.pending if p.partition == key]
            unsnapshotted = [
                s.manifest.offsets.get(key, 0) if s.manifest else 0
                for s in self.adapters.values()
                if s.dirty and key in s.applied
            ]
            safe = min([*pending, *unsnapshotted, self.consumer.position(tp)])
            offsets[tp] = OffsetAndMetadata(safe, "", -1)
        if offsets:
            self.consumer.commit(offsets)

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"fields": {"partitions": [str(tp) for tp in partitions]}})

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Snapshot what was learned and forget state the next owner rebuilds from Redis.

        No Kafka commit here (not allowed on the network thread, and the partitions
        are leaving): the next owner replays from the last commit and skips what
        the manifests already contain.
        """
        self.snapshot_all(commit=False)
        self.adapters.clear()
        log.info("partitions revoked", extra={"fields": {"partitions": [str(tp) for tp in partitions]}})


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_partitions_revoked(self, revoked) -> None:
        self.trainer.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned) -> None:
        self.trainer.on_assigned(list(assigned))

