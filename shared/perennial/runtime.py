"""Process start-up shared by the services: logs, threads, metrics endpoint, signals."""

from __future__ import annotations

import logging
import signal
import threading

import torch
from prometheus_client import CollectorRegistry, start_http_server

from perennial import logs
from perennial.config import env

log = logging.getLogger(__name__)


def start(service: str) -> tuple[CollectorRegistry, threading.Event]:
    """Configure logging and torch threads, serve /metrics, turn SIGTERM/SIGINT into an event."""
    logs.configure(env("PERENNIAL_LOG_LEVEL", "INFO"))
    threads = env("PERENNIAL_TORCH_THREADS", 0, int)
    if threads > 0:
        torch.set_num_threads(threads)
    registry = CollectorRegistry()
    port = env("PERENNIAL_METRICS_PORT", 9100 if service == "trainer" else 9101, int)
    start_http_server(port, addr=env("PERENNIAL_METRICS_ADDR", "0.0.0.0"), registry=registry)
    stop = threading.Event()

    def _stop(signum: int, _frame) -> None:
        log.info(
            "stopping",
            extra={"fields": {"service": service, "signal": signal.Signals(signum).name}},
        )
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("starting", extra={"fields": {"service": service, "metrics_port": port}})
    return registry, stop
