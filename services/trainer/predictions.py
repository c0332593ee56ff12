"""The prediction log, read by the trainer for the feedback join (`join.py`).

Every trainer replica reads every partition of the log (`assign`, no consumer group): feedback
for any adapter may reach any replica. It starts where the manifests say the join's oldest
held prediction was (`resume_offsets`), so after a restart the predictions that feedback not
yet in a snapshot may need are read again. Main thread only, like the examples consumer.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from perennial.codec import DecodeError
from perennial.feedback import decode_prediction
from perennial.store import SnapshotStore
from services.trainer.join import PredictionIndex
from services.trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)
# A high-watermark is as old as the fetch that brought it: at most a poll period of the loop (1 s)
# plus the broker's fetch wait (0.5 s) before the poll that reads it.
FETCH_AGE_SECONDS = 2.0


def resume_offsets(store: SnapshotStore, topic: str) -> dict[str, int]:
    """Per partition of the log, the lowest offset any adapter's checkpoint (where its trainer
    resumes from) records."""
    lowest: dict[str, int] = {}
    for adapter in store.adapters():
        version = store.pointer(adapter, "latest")
        manifest = store.manifest(adapter, version) if version else None
        if manifest is not None and manifest.resume_version != manifest.version:
            manifest = store.manifest(adapter, manifest.resume_version)
        for partition, offset in (manifest.offsets if manifest else {}).items():
            if partition.rpartition(":")[0] == topic:
                lowest[partition] = min(lowest.get(partition, offset), offset)
    return lowest


class PredictionReader:
    """Reads the prediction log into the join's index; knows when it has read to the end."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        topic: str,
        index: PredictionIndex,
        start: dict[str, int],
        metrics: TrainerMetrics,
    ) -> None:
        self.consumer, self.topic, self.index, self.metrics = consumer, topic, index, metrics
        self.start = start
        self.offsets: dict[str, int] = {}  # what manifests record: read again from here
        self._assigned = False

    def poll(self, timeout_ms: int = 0) -> None:
        if not self._assigned and not self._assign():
            self.index.caught_up_at = time.time()  # no log yet: nothing to wait for
            return
        started = time.time()
        try:
            batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        except KafkaError as error:
            self.metrics.dependency_errors.labels("kafka").inc()
            log.warning("prediction log poll failed", extra={"fields": {"error": str(error)}})
            return
        if not batches and self._at_end():
            # the high-watermarks come from a fetch sent a little earlier: date it back
            self.index.caught_up_at = max(self.index.caught_up_at, started - FETCH_AGE_SECONDS)
        for tp, records in batches.items():
            partition = f"{tp.topic}:{tp.partition}"
            for record in records:
                try:
                    prediction = decode_prediction(record.value, timestamp_ms=record.timestamp)
                except DecodeError:
                    self.metrics.feedback_predictions_dropped.labels("undecodable").inc()
                    continue
                self.index.add(prediction, partition, record.offset)
        self._update_offsets()

    def _at_end(self) -> bool:
        """Every partition read up to the high-watermark of its last fetch (none yet: not)."""
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                return False
            try:
                if self.consumer.position(tp, timeout_ms=1000) < highwater:
                    return False
            except KafkaError:
                return False
        return True

    def _assign(self) -> bool:
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        for tp in tps:
            offset = self.start.get(f"{tp.topic}:{tp.partition}")
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        self._assigned = True
        log.info(
            "reading the prediction log",
            extra={"fields": {"topic": self.topic, "from": self.start}},
        )
        return True

    def _update_offsets(self) -> None:
        offsets = {}
        low = self.index.low_water()
        for tp in self.consumer.assignment():
            key = f"{tp.topic}:{tp.partition}"
            if key in low:
                offsets[key] = low[key]
            else:
                try:
                    offsets[key] = self.consumer.position(tp, timeout_ms=1000)
                except KafkaError:
                    continue
        self.offsets = offsets  # one assignment: the training thread reads it

    def close(self) -> None:
        self.consumer.close(autocommit=False)
