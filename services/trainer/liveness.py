"""Liveness that tells the truth: a watchdog over the training thread and the poll loop.

Each loop stamps a heartbeat (`Trainer.heartbeat`, `Ingest.heartbeat`) every round, and
while it waits on Redis or Kafka on purpose. If the training thread has died, or either
heartbeat is older than `stall_seconds`, the watchdog sets gRPC health NOT_SERVING (the
Kubernetes liveness probe then restarts the pod) and `perennial_trainer_stalled{thread}`
to 1; both recover if the thread does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from services.trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class Watchdog:
    """Checks heartbeats every `interval` seconds; reports through `set_serving` and metrics."""

    def __init__(
        self,
        threads: dict[str, tuple[Callable[[], bool], Callable[[], float]]],
        stall_seconds: float,
        metrics: TrainerMetrics,
        set_serving: Callable[[bool], None],
        interval: float = 1.0,
    ) -> None:
        self.threads = threads  # name -> (is alive, last heartbeat on the monotonic clock)
        self.stall_seconds = stall_seconds
        self.metrics = metrics
        self.set_serving = set_serving
        self.interval = interval
        self.healthy = True

    def check(self) -> bool:
        """One round: True if every thread is alive and recent."""
        now, healthy = time.monotonic(), True
        for name, (alive, heartbeat) in self.threads.items():
            age = max(0.0, now - heartbeat())
            stalled = not alive() or age > self.stall_seconds
            self.metrics.heartbeat_age.labels(name).set(age)
            self.metrics.stalled.labels(name).set(int(stalled))
            if stalled:
                healthy = False
                if self.healthy:
                    log.error(
                        "thread dead or stalled: health NOT_SERVING",
                        extra={"fields": {"thread": name, "alive": alive(), "silent_seconds": age}},
                    )
        if healthy != self.healthy:
            self.set_serving(healthy)
            self.healthy = healthy
        return healthy

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.check()
