"""The prediction log: every served row to Kafka (`perennial.predictions`), off the request path.

A request only draws its prediction ids and puts one item on a bounded queue (`put_nowait`);
a background thread encodes the rows (`perennial.v1.Prediction`, key = adapter id) and hands
them to kafka-python's producer, which batches and sends on its own thread. A full queue, a
producer that cannot be created or a failed send drops rows and counts them
(`perennial_inference_predictions_dropped_total{reason}`); nothing here can delay or fail a
request. `NoPredictionLog` is the switch when the log is off: it hands out no ids.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from perennial.feedback import LoggedPrediction, encode_prediction, new_prediction_id, sha256_of
from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)
RETRY_SECONDS = 5.0  # between attempts to create the producer while Kafka is away


@dataclass(frozen=True)
class PredictionLogConfig:
    """Where the log goes and how much may wait for it."""

    topic: str = "perennial.predictions"
    queue_size: int = 10_000  # requests (each with its rows) waiting for the producer
    log_inputs: bool = True  # False: only each input's sha256 (nothing to learn from)


@dataclass(frozen=True)
class _Served:
    """One request's rows, as the queue holds them until the background thread encodes them."""

    ids: list[str]
    time: float
    adapter: str
    version: str
    rows: Sequence
    labels: list[str]
    scores: np.ndarray
    classes: list[str]


class NoPredictionLog:
    """The prediction log switched off: no ids, nothing written."""

    def record(self, adapter, version, rows, labels, scores, classes) -> list[str]:
        return []

    def start(self, stop: threading.Event) -> NoPredictionLog:
        return self

    def close(self, timeout: float = 5.0) -> None:
        pass


class PredictionLog:
    """A bounded queue in front of a Kafka producer, drained by one background thread."""

    def __init__(
        self,
        config: PredictionLogConfig,
        make_producer: Callable[[], object],
        metrics: InferenceMetrics,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._make_producer = make_producer
        self._producer = None
        self._retry_at = 0.0
        self._queue: queue.Queue[_Served | None] = queue.Queue(config.queue_size)
        self._thread: threading.Thread | None = None
        for reason in ("queue_full", "kafka"):
            metrics.predictions_dropped.labels(reason)

    # -- the request path: no I/O, no encoding ---------------------------------------------
    def record(self, adapter, version, rows, labels, scores, classes) -> list[str]:
        """Queue one request's rows; return their prediction ids (also when they are dropped:
        the answer must not depend on the log)."""
        now = time.time()
        ids = [new_prediction_id(now) for _ in rows]
        try:
            self._queue.put_nowait(
                _Served(ids, now, adapter, version, rows, labels, scores, classes)
            )
        except queue.Full:
            self.metrics.predictions_dropped.labels("queue_full").inc(len(ids))
        return ids

    # -- the background thread ---------------------------------------------------------------
    def start(self, stop: threading.Event) -> PredictionLog:
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="prediction-log", daemon=True
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout`), then flush the producer."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except Exception as error:  # noqa: BLE001 - shutting down; counted, logged
                log.warning("prediction log not flushed", extra={"fields": {"error": str(error)}})

    def _run(self, stop: threading.Event) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is None:
                return
            producer = self._producer_or_none()
            if producer is None:
                self.metrics.predictions_dropped.labels("kafka").inc(len(item.ids))
                continue
            for prediction in self._rows(item):
                try:
                    future = producer.send(
                        self.config.topic,
                        key=prediction.adapter.encode(),
                        value=encode_prediction(prediction),
                    )
                    future.add_callback(self._sent).add_errback(self._failed)
                except Exception as error:  # noqa: BLE001 - a row lost, never the thread
                    self._failed(error)

    def _producer_or_none(self):
        if self._producer is None and time.monotonic() >= self._retry_at:
            try:
                self._producer = self._make_producer()
            except Exception as error:  # noqa: BLE001 - Kafka away: drop, count, try later
                log.warning(
                    "prediction log: no Kafka producer; dropping rows",
                    extra={"fields": {"error": str(error)}},
                )
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return None
        return self._producer

    def _rows(self, item: _Served) -> list[LoggedPrediction]:
        rows = []
        for i, (prediction_id, row, label) in enumerate(
            zip(item.ids, item.rows, item.labels, strict=True)
        ):
            if isinstance(row, str):
                text, digest = (row, "") if self.config.log_inputs else ("", sha256_of(row))
            else:  # a tensor: only its hash is logged
                text = ""
                digest = hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest()
            scores = dict(zip(item.classes, item.scores[i].tolist(), strict=True))
            rows.append(
                LoggedPrediction(
                    prediction_id,
                    item.adapter,
                    item.version,
                    label,
                    item.time,
                    text=text,
                    input_sha256=digest,
                    scores=scores,
                )
            )
        return rows

    def _sent(self, _metadata) -> None:
        self.metrics.predictions_logged.inc()

    def _failed(self, error) -> None:
        self.metrics.predictions_dropped.labels("kafka").inc()
        log.warning("prediction not logged", extra={"fields": {"error": str(error)[:300]}})
