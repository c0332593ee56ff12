"""What both services' drift monitors share: a background worker and the null monitor.

Detectors run off the hot path: the caller hands a batch to `submit`, which only
puts it on a bounded queue (never blocks; a full queue drops the batch and counts
it), and one background thread updates the detectors and the metrics. The
monitors themselves live with their service (`services.inference.monitor`,
`services.trainer.monitor`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)


class BackgroundWorker:
    """A bounded queue drained by one daemon thread; `submit` never blocks.

    Updates run with BLAS (numpy's, scipy's) and OpenMP (torch's) limited to one thread: on a
    small, busy machine a multi-threaded call oversubscribes the cores (measured: a 384 x 384 SVD
    step took 120 ms instead of 2 ms) and steals CPU from the requests. OpenMP's limit is per
    thread, so `torch.set_num_threads` in the main thread does not reach this one: with only BLAS
    limited, an inference drift update cost 5.8 ms of CPU per text, with both 0.8 ms.
    """

    def __init__(self, name: str, queue_size: int, on_drop: Callable[[str], None]) -> None:
        self._queue: queue.Queue[tuple[Callable[..., None], tuple]] = queue.Queue(
            maxsize=queue_size
        )
        self._on_drop = on_drop
        self._threads = ThreadpoolController()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, adapter: str, handler: Callable[..., None], *args: object) -> bool:
        try:
            self._queue.put_nowait((handler, (adapter, *args)))
            return True
        except queue.Full:
            self._on_drop(adapter)
            return False

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch is processed (tests, shutdown); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            handler, args = self._queue.get()
            try:
                with self._threads.limit(limits=1):
                    handler(*args)
            except Exception:  # a bad batch must not stop monitoring
                log.exception("drift update failed", extra={"fields": {"adapter": args[0]}})
            finally:
                self._queue.task_done()


class NoMonitor:
    """The null monitor: accepts every call and does nothing (monitoring switched off, tests)."""

    def submit(self, *args: object) -> bool:
        return False

    submit_prequential = submit_evaluation = submit_classes = submit

    def before_learning(self, *args: object, **kwargs: object) -> None:
        return None

    after_snapshot = before_learning

    def evaluation_due(self, adapter: str, classes: int) -> bool:
        return False

    def drain(self, timeout: float | None = None) -> bool:
        return True
