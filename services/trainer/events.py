"""Lifecycle events as protobuf `perennial.v1.Event` on the topic `perennial.events`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from perennial.v1 import events_pb2
from services.trainer.kube_events import EventReason, EventRecorder

log = logging.getLogger(__name__)


class EventPublisher:
    """Send events through `send(topic, key, value)` (a KafkaProducer's, or a test's).

    Dead letters are sampled: at most one event per reason every `dead_letter_every`
    seconds, carrying how many dead letters it stands for. Promotions, holds and
    rollbacks are also recorded as Kubernetes Events on the trainer's Pod when
    `kubernetes` is an enabled `services.trainer.kube_events.EventRecorder`.
    """

    def __init__(
        self,
        send: Callable[..., object],
        topic: str,
        source: str,
        dead_letter_every: float = 10.0,
        kubernetes: EventRecorder | None = None,
    ) -> None:
        self._send = send
        self.kubernetes = kubernetes or EventRecorder(None, None)
        self.topic = topic
        self.source = source
        self.dead_letter_every = dead_letter_every
        self._dead_letters: dict[str, tuple[float, int]] = {}  # reason -> (last sent, unsent count)
        self._lock = threading.Lock()

    def _emit(self, adapter: str, **kind) -> events_pb2.Event:
        event = events_pb2.Event(adapter=adapter, source=self.source, **kind)
        event.time.FromNanoseconds(time.time_ns())
        try:
            self._send(self.topic, key=adapter.encode(), value=event.SerializeToString())
        except Exception:  # events are for audit; never let them stop training
            log.exception("could not send an event", extra={"fields": {"kind": next(iter(kind))}})
        return event

    def snapshot_published(
        self, adapter: str, version: str, parent: str | None, examples: int, sha256: str
    ):
        return self._emit(
            adapter,
            snapshot_published=events_pb2.SnapshotPublished(
                version=version, parent=parent or "", examples=examples, sha256=sha256
            ),
        )

    def promoted(self, adapter: str, version: str, previous: str | None, forced: bool = False):
        self.kubernetes.record(
            EventReason.PROMOTED,
            f"adapter {adapter}: {version} is the head"
            + (" (forced by an operator)" if forced else ""),
        )
        return self._emit(
            adapter,
            promoted=events_pb2.Promoted(version=version, previous=previous or "", forced=forced),
        )

    def held(
        self,
        adapter: str,
        version: str,
        head: str,
        candidate_accuracy: float,
        head_accuracy: float,
        margin: float,
        reason: str,
    ):
        self.kubernetes.record(
            EventReason.GUARDRAIL_HELD, f"adapter {adapter}: {version} held; {reason}"
        )
        return self._emit(
            adapter,
            held=events_pb2.Held(
                version=version,
                head=head,
                candidate_accuracy=candidate_accuracy,
                head_accuracy=head_accuracy,
                margin=margin,
                reason=reason,
            ),
        )

    def rolled_back(self, adapter: str, version: str, previous: str | None):
        self.kubernetes.record(
            EventReason.ROLLED_BACK, f"adapter {adapter}: rolled back to {version}"
        )
        return self._emit(
            adapter, rolled_back=events_pb2.RolledBack(version=version, previous=previous or "")
        )

    def fell_back(
        self, adapter: str, corrupted: str, version: str | None, reason: str, message: str
    ):
        event = self._emit(
            adapter,
            fell_back=events_pb2.FellBack(
                corrupted=corrupted, version=version or "", reason=reason, message=message
            ),
        )
        self.kubernetes.record(
            EventReason.FELL_BACK,
            f"adapter {adapter}: snapshot {corrupted} failed verification ({reason}); "
            f"continuing from {version or 'scratch'}",
        )
        return event

    def dead_lettered(
        self, adapter: str, reason: str, message: str, topic: str, partition: int, offset: int
    ) -> events_pb2.Event | None:
        now = time.monotonic()
        with self._lock:
            last, unsent = self._dead_letters.get(reason, (-float("inf"), 0))
            if now - last < self.dead_letter_every:
                self._dead_letters[reason] = (last, unsent + 1)
                return None
            self._dead_letters[reason] = (now, 0)
        return self._emit(
            adapter,
            dead_lettered=events_pb2.DeadLettered(
                reason=reason,
                message=message,
                topic=topic,
                partition=partition,
                offset=offset,
                sampled_of=unsent + 1,
            ),
        )
