"""Dynamic batching: requests from many gRPC threads become one model call.

One batch thread takes requests in arrival order until the batch holds
`max_batch_size` rows or the oldest request has waited `max_queue_delay`; while
a batch runs, the next one fills, so under load batches grow by themselves.
The delay is spent only when company may come: when more than one request was
outstanding since the batch before last. A lone client's request goes straight to
the model instead of waiting for requests nobody is sending.
The queue is bounded (`max_queue_size` requests): a full queue rejects at once
with `ResourceExhausted` (back-pressure, instead of latency growing without bound).
A request whose deadline has passed, or whose caller went away, is skipped
before the model runs.

Hand-written rather than taken from a library: the serving frameworks that batch
(Triton, TorchServe, Ray Serve) are whole servers, not embeddable components, and
the logic is ~100 lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from perennial.errors import DeadlineExceeded, NotReady, ResourceExhausted
from services.inference.cpus import pin_current_thread
from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)
Key = TypeVar("Key")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchingConfig:
    """max_batch_size: rows per model call; max_queue_delay_seconds: longest wait for a batch
    to fill; max_queue_size: requests waiting before new ones are rejected; cpus: the CPUs the
    batch thread runs on (None: wherever the scheduler puts it; see `cpus.py`)."""

    max_batch_size: int = 64
    max_queue_delay_seconds: float = 0.002
    max_queue_size: int = 256
    cpus: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_seconds < 0:
            raise ValueError(
                f"max_queue_delay_seconds must be >= 0, got {self.max_queue_delay_seconds}"
            )
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")


@dataclass(eq=False)
class Job(Generic[Key]):
    """One request's rows for one model key (e.g. an adapter version)."""

    key: Key
    rows: list
    deadline: float | None  # time.monotonic() value, None = no deadline
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    started: float | None = None  # when its batch reached the model (time.monotonic())
    model_seconds: float | None = None  # how long its batch's model call took

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Batcher(Generic[Key, Result]):
    """Runs `run([(key, rows), ...]) -> [result, ...]` on batches of submitted jobs."""

    def __init__(
        self,
        run: Callable[[Sequence[tuple[Key, list]]], list[Result]],
        config: BatchingConfig,
        metrics: InferenceMetrics,
        on_executed: Callable[[list[Job], float], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._run = run
        self._on_executed = on_executed  # (jobs, seconds) after each model call: statistics
        self._queue: deque[Job] = deque()
        self._rows = 0
        self._outstanding = 0  # submitted and not yet answered
        self._peaks = [0, 0]  # most outstanding during the last batch's window, and now
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def submit(self, key: Key, rows: list, deadline: float | None = None) -> Job:
        """Queue rows for `key`; the job's future gets the result. Raises if full or stopping."""
        if len(rows) > self.config.max_batch_size:
            raise ResourceExhausted(
                f"{len(rows)} rows exceed the max batch size {self.config.max_batch_size}"
            )
        job = Job(key, rows, deadline)
        with self._condition:
            if self._stopping:
                raise NotReady("the server is draining; retry on another replica")
            if len(self._queue) >= self.config.max_queue_size:
                raise ResourceExhausted(
                    f"the request queue is full ({self.config.max_queue_size} requests); "
                    "retry with backoff or add replicas"
                )
            self._queue.append(job)
            self._outstanding += 1
            self._peaks[1] = max(self._peaks[1], self._outstanding)
            self._rows += len(rows)
            self.metrics.queue_rows.set(self._rows)
            self._condition.notify()
        return job

    def result(self, job: Job, deadline: float | None) -> Result:
        """Wait for `job`; past `deadline` the job is cancelled and `DeadlineExceeded` raised."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return job.future.result(timeout)
        except FutureTimeout:
            job.cancelled = True
            raise DeadlineExceeded(
                "the deadline passed while the request waited for the model; "
                "raise the client timeout or reduce load"
            ) from None

    def stop(self, timeout: float | None = None) -> None:
        """Reject new jobs, finish the queued ones, end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the batch thread ------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self._condition:
            while not self._queue:
                if self._stopping:
                    return None
                self._condition.wait()
            delay = self.config.max_queue_delay_seconds if max(self._peaks) > 1 else 0.0
            fill_until = self._queue[0].enqueued + delay
            while self._rows < self.config.max_batch_size and not self._stopping:
                remaining = fill_until - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + len(self._queue[0].rows) <= self.config.max_batch_size:
                job = self._queue.popleft()
                rows += len(job.rows)
                batch.append(job)
            self._rows -= rows
            self._peaks = [self._peaks[1], self._outstanding]
            self.metrics.queue_rows.set(self._rows)
            return batch

    def _answered(self, jobs: int) -> None:
        with self._condition:
            self._outstanding -= jobs

    def _loop(self) -> None:
        if self.config.cpus:
            pin_current_thread(self.config.cpus)
        while (batch := self._next_batch()) is not None:
            now = time.monotonic()
            live = []
            for job in batch:
                if job.cancelled or job.expired(now):
                    self._answered(1)
                    job.future.set_exception(
                        DeadlineExceeded(
                            "the deadline passed before the request reached the model; the work was skipped"
                        )
                    )
                else:
                    live.append(job)
                    job.started = now
                    self.metrics.queue_duration.observe(now - job.enqueued)
            if not live:
                continue
            self.metrics.batch_size.observe(sum(len(job.rows) for job in live))
            try:
                results = self._run([(job.key, job.rows) for job in live])
            except Exception as error:  # delivered to every caller; the thread keeps going
                self._answered(len(live))
                for job in live:
                    job.future.set_exception(error)
                continue
            finally:
                elapsed = time.monotonic() - now
                self.metrics.batch_duration.observe(elapsed)
            for job in live:
                job.model_seconds = elapsed
            if self._on_executed is not None:
                try:
                    self._on_executed(live, elapsed)
                except Exception:  # statistics must never fail a batch
                    log.exception("recording a batch failed")
            self._answered(len(live))  # before the answers: a caller may ask again at once
            for job, result in zip(live, results, strict=True):
                job.future.set_result(result)
