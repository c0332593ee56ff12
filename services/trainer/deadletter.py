"""Dead letters: a record that cannot be learned goes to the dead-letter topic with its reason.

Used by the poll loop (records that fail to decode or validate) and by the training thread
(records beyond an adapter's class limit); KafkaProducer is thread-safe. Nothing is dropped
silently: a value too large for the dead-letter topic is sent truncated, with its size and
the reason in the headers, and a send that fails for another reason raises
`DeadLetterFailed` so the caller re-reads the record instead of committing past it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError

from services.trainer.events import EventPublisher
from services.trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)
SEND_TIMEOUT_SECONDS = 30.0
HEADROOM_BYTES = 4096  # headers, key and batch framing beside the value


class DeadLetterFailed(RuntimeError):
    """The dead-letter topic did not take the record; it must be read again, not committed."""


@dataclass(frozen=True)
class Rejected:
    """Where a rejected record came from, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str


class DeadLetters:
    """Sends rejected records to the dead-letter topic; counts and announces them."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        max_bytes: int,
        metrics: TrainerMetrics,
        events: EventPublisher,
    ) -> None:
        self.producer, self.topic, self.max_bytes = producer, topic, max_bytes
        self.metrics, self.events = metrics, events

    def send(self, record: Rejected) -> None:
        """Deliver `record` (confirmed) or raise `DeadLetterFailed`."""
        value = record.value or b""
        headers = [
            ("perennial.error.class", record.reason.encode()),
            ("perennial.error.message", record.message.encode()[:1024]),
            ("perennial.source.topic", record.topic.encode()),
            ("perennial.source.partition", str(record.partition).encode()),
            ("perennial.source.offset", str(record.offset).encode()),
        ]
        limit = max(0, self.max_bytes - HEADROOM_BYTES - len(record.key or b""))
        try:
            self._send(record, value, headers, limit)
        except MessageSizeTooLargeError:
            # The broker or producer takes less than configured: keep the evidence, not the body.
            self._send(record, value, headers, min(limit, 64 * 1024))
        except KafkaError as error:
            self.metrics.dependency_errors.labels("kafka").inc()
            raise DeadLetterFailed(f"dead-letter topic unavailable: {error}") from error
        self.metrics.dead_lettered.labels(record.reason).inc()
        adapter = (record.key or b"").decode("utf-8", "replace")[:128]
        self.events.dead_lettered(
            adapter, record.reason, record.message, record.topic, record.partition, record.offset
        )
        log.warning(
            "dead-lettered a record",
            extra={
                "fields": {
                    "reason": record.reason,
                    "error": record.message,
                    "partition": record.partition,
                    "offset": record.offset,
                    "bytes": len(value),
                }
            },
        )

    def _send(self, record: Rejected, value: bytes, headers: list, limit: int) -> None:
        if len(value) > limit:
            headers = [
                *headers,
                ("perennial.truncated", b"true"),
                ("perennial.original.bytes", str(len(value)).encode()),
            ]
            value = value[:limit]
            self.metrics.dead_letters_truncated.inc()
        key = record.key[:1024] if record.key else record.key
        self.producer.send(self.topic, key=key, value=value, headers=headers).get(
            timeout=SEND_TIMEOUT_SECONDS
        )
