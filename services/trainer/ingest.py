"""The Kafka side of the trainer: poll, validate, dead-letter, back-pressure, lag, commit.

Runs on the main thread and only there (kafka-python's consumer is not
thread-safe). Training happens on the trainer's own thread, so a long step never
delays `poll()` and group membership never times out.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from perennial import codec, tracing
from perennial.feedback import decode_feedback, prediction_time
from services.trainer.deadletter import DeadLetterFailed, DeadLetters, Rejected
from services.trainer.events import EventPublisher
from services.trainer.join import (
    WAIT,
    AnsweredMarks,
    FeedbackJoin,
    JoinConfig,
    PredictionIndex,
    Refused,
    Wait,
)
from services.trainer.metrics import TrainerMetrics
from services.trainer.predictions import PredictionReader, resume_offsets
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Incoming, Trainer

log = logging.getLogger(__name__)
POLL_TIMEOUT_MS = 1000  # kafka-python 3.0.12 may discard a group join whose poll times out
# between JoinGroup and SyncGroup; short polls make that 3 s penalty common. poll() returns
# as soon as records arrive, so a long timeout costs no latency.


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def incoming_of(record, example: codec.Example, epoch: int = 0) -> Incoming:
    """A validated record for the training thread, with the producer's trace context if sent."""
    return Incoming(
        partition_key(record.topic, record.partition),
        record.offset,
        example,
        tracing.extract_link(record.headers),
        epoch=epoch,
    )


class Ingest:
    """The Kafka consumer loop of the trainer (main thread only)."""

    def __init__(
        self,
        settings: TrainerSettings,
        trainer: Trainer,
        metrics: TrainerMetrics,
        producer: KafkaProducer,
        events: EventPublisher,
    ) -> None:
        self.settings = settings
        self.spec = settings.input_spec()  # texts, or images of one shape
        self.trainer = trainer
        self.metrics = metrics
        self.producer = producer
        self.events = events
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_poll_records=max(settings.batch_size * 8, 128),
            **settings.kafka_options(),
        )
        self.dead_letters = DeadLetters(
            producer, settings.dead_letter_topic, settings.dead_letter_max_bytes, metrics, events
        )
        trainer.dead_letters = self.dead_letters
        self._committed: dict[str, int] = {}
        self._epochs: dict[str, int] = {}  # partition -> epoch stamped on its records
        self._assignments = 0  # bumped by every assignment (on kafka-python's network thread)
        self._restart_pending = False
        self._backpressure = False
        self.heartbeat = time.monotonic()  # the watchdog reads it: the poll loop is alive
        self.lag: dict[
            str, int
        ] = {}  # partition -> records not yet fetched (read by the control API)
        self.join: FeedbackJoin | None = None
        self.reader: PredictionReader | None = None
        self._waiting: dict[TopicPartition, tuple[float, str]] = {}  # paused for a prediction
        if settings.feedback:
            self._start_join()

    def _start_join(self) -> None:
        """Feedback on: the join, its index of logged predictions and their reader."""
        settings, store = self.settings, self.trainer.store
        config = JoinConfig(
            settings.feedback_window_seconds,
            settings.feedback_wait_seconds,
            settings.feedback_max_predictions,
        )
        index = PredictionIndex(config, self.metrics)
        marks = AnsweredMarks(
            store.redis, store.prefix, config.window_seconds + config.wait_seconds + 3600
        )
        self.join = FeedbackJoin(config, index, marks)
        self.reader = PredictionReader(
            KafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                enable_auto_commit=False,
                **settings.kafka_options(),
            ),
            settings.predictions_topic,
            index,
            resume_offsets(store, settings.predictions_topic),
            self.metrics,
        )
        # every manifest records where the log must be read again from after a restart
        self.trainer.side_offsets = lambda: self.reader.offsets

    def run(self, stop: threading.Event) -> None:
        topics = [self.settings.topic]
        if self.join is not None:
            topics.append(self.settings.feedback_topic)
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        log.info(
            "consuming",
            extra={"fields": {"topic": self.settings.topic, "group": self.settings.group_id}},
        )
        while not stop.is_set():
            self.poll_once()

    def close(self) -> None:
        self.commit()
        self.consumer.close(autocommit=False)
        if self.reader is not None:
            self.reader.close()

    def poll_once(self) -> None:
        self.heartbeat = time.monotonic()
        self._apply_rewinds()
        if self.reader is not None:
            self.reader.poll()  # predictions first: feedback read below may need them
            self._release_waiting()
        assignments = self._assignments
        try:
            batches = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except KafkaError as error:
            self.metrics.dependency_errors.labels("kafka").inc()
            log.warning("poll failed; retrying", extra={"fields": {"error": str(error)}})
            return
        if self._restart_pending or self._assignments != assignments:
            # a rebalance happened: what was fetched may start past records the revocation
            # dropped, so read every assigned partition again from its committed offset
            self._restart_pending = not self._restart_from_commits()
            self._waiting.clear()
            return
        incoming = []
        for tp, records in batches.items():
            key = partition_key(tp.topic, tp.partition)
            epoch = self._epochs.get(key, 0)
            for record in records:
                try:
                    if tp.topic == self.settings.feedback_topic and self.join is not None:
                        example = self._join(record, tp)
                        if example is WAIT:
                            break  # paused at this record until its prediction is read
                    else:
                        example = self._validate(record)
                except (DeadLetterFailed, redis.RedisError) as error:  # read it again later
                    self.metrics.dependency_errors.labels(
                        "redis" if isinstance(error, redis.RedisError) else "kafka"
                    ).inc()
                    log.warning(
                        "dead letter or answer mark not written; re-reading",
                        extra={"fields": {"error": str(error)}},
                    )
                    self.consumer.seek(tp, record.offset)
                    break
                if example is not None:
                    incoming.append(incoming_of(record, example, epoch))
        self.trainer.deliver(incoming)
        self._apply_backpressure()
        self._report_lag()
        self.commit()

    def _validate(self, record) -> codec.Example | None:
        """The record's Example, or None once it is dead-lettered (confirmed) with its reason."""
        try:
            limit = self.settings.max_record_bytes
            if record.value is not None and len(record.value) > limit:
                raise codec.DecodeError(
                    "RecordTooLarge", f"record has {len(record.value)} bytes; at most {limit}"
                )
            return codec.decode(
                record.value, key=record.key, timestamp_ms=record.timestamp, spec=self.spec
            )
        except codec.DecodeError as error:
            reason, message = error.reason, str(error)
        except Exception as error:  # noqa: BLE001 - contained to this record, never the loop
            reason, message = "Undecodable", f"{type(error).__name__}: {error}"[:500]
        self.dead_letters.send(
            Rejected(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.value,
                reason,
                message,
            )
        )
        return None

    def _join(self, record, tp: TopicPartition) -> codec.Example | Wait | None:
        """A feedback record's example, or None once dead-lettered (confirmed), or `WAIT`
        (the partition is paused at the record until its prediction is read)."""
        position = partition_key(record.topic, record.partition) + f"@{record.offset}"
        try:
            limit = self.settings.max_record_bytes
            if record.value is not None and len(record.value) > limit:
                raise codec.DecodeError(
                    "RecordTooLarge", f"record has {len(record.value)} bytes; at most {limit}"
                )
            feedback = decode_feedback(record.value, timestamp_ms=record.timestamp)
        except codec.DecodeError as error:
            self._reject_feedback(record, record.key, error.reason, str(error))
            return None
        outcome = self.join.join(feedback, position)
        if outcome is WAIT:
            self.consumer.seek(tp, record.offset)
            self.consumer.pause(tp)
            self._waiting[tp] = (
                prediction_time(feedback.prediction_id) + self.settings.feedback_wait_seconds,
                feedback.prediction_id,
            )
            return WAIT
        if isinstance(outcome, Refused):
            self._reject_feedback(record, record.key, outcome.reason, outcome.message)
            return None
        adapter = outcome.example.adapter
        served = "correct" if outcome.served_label == outcome.example.label else "wrong"
        self.metrics.feedback_joined.labels(adapter, served).inc()
        if not outcome.learnable:
            self._reject_feedback(
                record,
                adapter.encode(),
                "InputNotLogged",
                "the prediction log holds only the input's sha256 (PERENNIAL_PREDICTION_LOG_INPUTS)",
            )
            return None
        return outcome.example

    def _reject_feedback(self, record, key: bytes | None, reason: str, message: str) -> None:
        self.dead_letters.send(
            Rejected(
                record.topic, record.partition, record.offset, key, record.value, reason, message
            )
        )

    def _release_waiting(self) -> None:
        """Resume feedback partitions whose prediction was read, or waited for long enough."""
        for tp, (until, prediction_id) in list(self._waiting.items()):
            if self.join.index.caught_up_at >= until or self.join.index.get(prediction_id):
                del self._waiting[tp]
                if tp in self.consumer.assignment() and not self._backpressure:
                    self.consumer.resume(tp)

    def _restart_from_commits(self) -> bool:
        """Seek every assigned partition to its committed offset, with a new epoch."""
        try:
            committed = {tp: self.consumer.committed(tp) for tp in self.consumer.assignment()}
        except KafkaError as error:
            self.metrics.dependency_errors.labels("kafka").inc()
            log.warning("reading commits failed; retrying", extra={"fields": {"error": str(error)}})
            return False
        epochs = {}
        for tp, offset in committed.items():
            key = partition_key(tp.topic, tp.partition)
            epochs[key] = self._epochs[key] = self.trainer.new_epoch()
            if offset is None:
                self.consumer.seek_to_beginning(tp)  # auto_offset_reset="earliest"
            else:
                self.consumer.seek(tp, offset)
        self.trainer.submit(lambda: self.trainer.restart_partitions(epochs)).result()
        return True

    def _apply_rewinds(self) -> None:
        """Seek partitions the trainer asked to read again (a fall-back or a fenced write)."""
        assigned = {partition_key(tp.topic, tp.partition): tp for tp in self.consumer.assignment()}
        for key, (epoch, offset) in self.trainer.take_rewinds().items():
            if epoch < self._epochs.get(key, 0):
                continue  # a rebalance since: the states that asked for it are gone
            self._epochs[key] = epoch  # also if revoked meanwhile: the stamps must agree later
            tp = assigned.get(key)
            if tp is None:
                continue  # the new owner reads from the snapshots itself
            self.consumer.seek(tp, offset)
            log.warning(
                "re-reading a partition", extra={"fields": {"partition": key, "offset": offset}}
            )

    def _apply_backpressure(self) -> None:
        backlog = self.trainer.backlog()
        assigned = self.consumer.assignment()
        if not self._backpressure and backlog > self.settings.max_pending:
            self.consumer.pause(*assigned)
            self._backpressure = True
            log.info("back-pressure: partitions paused", extra={"fields": {"backlog": backlog}})
        elif self._backpressure and backlog <= self.settings.max_pending // 2:
            self.consumer.resume(*assigned)
            self._backpressure = False
            log.info("back-pressure released", extra={"fields": {"backlog": backlog}})
        self.metrics.backpressure.set(int(self._backpressure))

    def _report_lag(self) -> None:
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(
                tp
            )  # from the last fetch; the broker's "latest" is stale
            if highwater is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=1000)
            except KafkaError:
                continue
            if position is not None:
                key = partition_key(tp.topic, tp.partition)
                # records fetched but not yet learned count too: a stuck trainer shows lag
                lag = max(0, highwater - position) + self.trainer.held(key)
                self.lag[key] = lag
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    def commit(self) -> None:
        """Commit the offsets the trainer reports as snapshotted, for partitions still assigned."""
        offsets = {}
        for tp in self.consumer.assignment():
            key = partition_key(tp.topic, tp.partition)
            safe = self.trainer.safe_offsets().get(key)
            if safe is not None and safe != self._committed.get(key):
                offsets[tp] = OffsetAndMetadata(safe, "", -1)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as error:
            self.metrics.dependency_errors.labels("kafka").inc()
            log.warning("commit failed; will retry", extra={"fields": {"error": str(error)}})
            return
        self._committed.update(
            {partition_key(tp.topic, tp.partition): o.offset for tp, o in offsets.items()}
        )

    # rebalance callbacks run on kafka-python's network thread: no blocking Kafka calls here
    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        keys = {partition_key(tp.topic, tp.partition) for tp in partitions}
        self.trainer.submit(lambda: self.trainer.revoke(keys)).result()
        for key in keys:
            self._committed.pop(key, None)
        log.info("partitions revoked", extra={"fields": {"partitions": sorted(keys)}})

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self._assignments += 1
        log.info(
            "partitions assigned",
            extra={
                "fields": {
                    "partitions": sorted(partition_key(tp.topic, tp.partition) for tp in partitions)
                }
            },
        )

    def assigned(self) -> list[str]:
        return sorted(partition_key(tp.topic, tp.partition) for tp in self.consumer.assignment())


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def on_partitions_revoked(self, revoked) -> None:
        self.ingest.on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned) -> None:
        self.ingest.on_assigned(set(assigned))
