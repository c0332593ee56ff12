"""The feedback join: a client's `{prediction_id, label}` + the logged prediction = an example.

The poll loop (`ingest.py`) asks `FeedbackJoin.join` about every feedback record, in offset
order; the answer is an `Example` to learn like any other (the feedback record's own
partition and offset go into the adapter's manifest, so the worker's exactly-once rule
covers it), a refusal with a reason for the dead-letter topic, or `WAIT` when the prediction
may still be on its way (the log is asynchronous: feedback can overtake its prediction).

- late: the feedback's time is more than `window_seconds` after its prediction's (the
  UUIDv7 id carries that time, so "late" needs no record of the prediction);
- unknown: not among the logged predictions although the prediction log was read up to
  `wait_seconds` past the prediction's time; evicted: dropped to keep the bound;
- duplicate: another feedback record already answered this prediction. Answers are marked
  in Redis (`SET NX`, with the feedback's own position as the value), so a record read
  again after a restart recognises its own mark and is joined again — the worker then
  learns or skips it by offset — while a second record for the prediction is refused.

`PredictionIndex` holds the logged predictions (bounded: the oldest are dropped and counted,
predictions older than the window expire); its lowest offset per partition goes into every
manifest, and a restarted trainer reads the prediction log again from there.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import redis

from perennial.codec import Example
from perennial.feedback import Feedback, LoggedPrediction, prediction_time
from services.trainer.metrics import TrainerMetrics


@dataclass(frozen=True)
class JoinConfig:
    """The join's window, how long unknown feedback waits, how many predictions it holds."""

    window_seconds: float = 86400.0
    wait_seconds: float = 10.0
    max_predictions: int = 100_000


@dataclass(frozen=True)
class Joined:
    """Feedback matched with its prediction: the example to learn and what was served."""

    example: Example
    served_label: str
    version: str
    learnable: bool  # False when only the input's hash was logged


@dataclass(frozen=True)
class Refused:
    """Feedback that cannot be learned: a dead letter with this reason."""

    reason: str
    message: str


class Wait:
    """`join`'s answer while the prediction may still arrive: ask again later."""


WAIT = Wait()


class PredictionIndex:
    """Logged predictions by id, oldest first, with the Kafka position each was read at."""

    def __init__(self, config: JoinConfig, metrics: TrainerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._items: OrderedDict[str, tuple[LoggedPrediction, str, int]] = OrderedDict()
        self.newest_time = 0.0  # of the predictions read
        self.evicted_until = 0.0  # predictions made up to here may have been dropped
        self.caught_up_at = 0.0  # wall time when the log was last read to its end
        for reason in ("bound", "expired"):
            metrics.feedback_predictions_dropped.labels(reason)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, prediction_id: str) -> LoggedPrediction | None:
        item = self._items.get(prediction_id)
        return item[0] if item is not None else None

    def add(self, prediction: LoggedPrediction, partition: str, offset: int) -> None:
        if prediction.prediction_id in self._items:
            return  # read again after a seek: the first copy stays
        self._items[prediction.prediction_id] = (prediction, partition, offset)
        self.newest_time = max(self.newest_time, prediction.event_time)
        horizon = self.newest_time - self.config.window_seconds - self.config.wait_seconds
        while self._items:
            oldest, _, _ = next(iter(self._items.values()))
            if len(self._items) > self.config.max_predictions:
                reason = "bound"
            elif oldest.event_time < horizon:
                reason = "expired"
            else:
                break
            self._items.popitem(last=False)
            self.evicted_until = max(self.evicted_until, oldest.event_time)
            self.metrics.feedback_predictions_dropped.labels(reason).inc()
        self.metrics.feedback_predictions_held.set(len(self._items))

    def low_water(self) -> dict[str, int]:
        """Per partition of the log, the lowest offset still held: where to read again from."""
        lowest: dict[str, int] = {}
        for _, partition, offset in self._items.values():
            if offset < lowest.get(partition, offset + 1):
                lowest[partition] = offset
        return lowest


class AnsweredMarks:
    """Which feedback record answered a prediction, in Redis (expires after the window)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: float) -> None:
        self.redis, self.prefix, self.ttl = client, prefix, max(1, int(ttl_seconds))

    def claim(self, adapter: str, prediction_id: str, position: str) -> str:
        """Mark `position` as the answer unless another is; return the answer's position."""
        key = f"{self.prefix}:{{{adapter}}}:answered:{prediction_id}"
        previous = self.redis.set(key, position, nx=True, get=True, ex=self.ttl)
        return previous.decode() if previous is not None else position


class FeedbackJoin:
    """Decides each feedback record: `Joined`, `Refused` or `WAIT` (see the module doc)."""

    def __init__(
        self, config: JoinConfig, index: PredictionIndex, marks: AnsweredMarks, clock=time.time
    ) -> None:
        self.config, self.index, self.marks, self.clock = config, index, marks, clock

    def join(self, feedback: Feedback, position: str) -> Joined | Refused | Wait:
        made = prediction_time(feedback.prediction_id)
        if made > self.clock() + self.config.wait_seconds:
            return Refused(
                "UnknownPrediction", f"prediction id {feedback.prediction_id} is from the future"
            )
        age = feedback.event_time - made
        if age > self.config.window_seconds:
            return Refused(
                "LateFeedback",
                f"feedback came {age:.0f} s after its prediction; the window is "
                f"{self.config.window_seconds:.0f} s",
            )
        prediction = self.index.get(feedback.prediction_id)
        if prediction is None:
            if made <= self.index.evicted_until:
                return Refused(
                    "PredictionEvicted",
                    "the prediction was dropped to keep PERENNIAL_FEEDBACK_MAX_PREDICTIONS",
                )
            if self.index.caught_up_at < made + self.config.wait_seconds:
                return WAIT
            return Refused(
                "UnknownPrediction",
                f"no logged prediction {feedback.prediction_id} (the log was read "
                f"{self.config.wait_seconds:.0f} s past its time)",
            )
        answered = self.marks.claim(prediction.adapter, feedback.prediction_id, position)
        if answered != position:
            return Refused(
                "DuplicateFeedback",
                f"prediction {feedback.prediction_id} was answered by the feedback at {answered}",
            )
        example = Example(
            prediction.adapter,
            feedback.prediction_id,
            prediction.text,
            feedback.label,
            feedback.event_time,
        )
        return Joined(example, prediction.label, prediction.version, bool(prediction.text))
