"""`python -m services.inference`: serve until SIGTERM, then drain. Configuration: the
`PERENNIAL_*` variables of `InferenceSettings` (`--help` lists them)."""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health
from kafka import KafkaProducer

from perennial import redis_connect, runtime, tracing
from perennial.grpc_security import ServerSecurity
from perennial.store import SnapshotStore
from services.inference.cpus import describe, pin_process, plan_cpus
from services.inference.metrics import InferenceDriftMetrics, InferenceMetrics
from services.inference.monitor import InferenceDriftMonitor, frozen_token_embedder, pooled_pixels
from services.inference.plane import DataPlane
from services.inference.predictionlog import PredictionLog
from services.inference.rest import RestServer
from services.inference.server import InferenceServicer, build_server, set_health
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def serve(settings: InferenceSettings) -> None:
    """Start, serve until SIGTERM, drain."""
    cpus = plan_cpus(settings.cpu_pinning, settings.torch_threads)
    if cpus is not None:  # the batch thread moves to its own CPU when it starts
        pin_process(cpus.others)
    security = ServerSecurity.from_settings(settings)
    store = SnapshotStore(redis_connect.connect(settings))
    registry, stop = runtime.start("inference", settings)
    metrics = InferenceMetrics(registry)
    servicer = InferenceServicer(metrics, settings.batching(cpus.model if cpus else None))
    health_servicer = health.HealthServicer()
    set_health(health_servicer, False)  # NOT_SERVING until the backbone is loaded
    server = build_server(
        servicer,
        health_servicer,
        settings.server(),
        security,
        tracing=tracing.server_interceptors(bool(settings.tracing_endpoint)),
    )
    runtime.listen(server, security, settings.grpc_host, settings.grpc_port, "grpc_port")
    # the same operations over HTTP/JSON: one batcher, one set of limits, metrics and statistics
    rest = RestServer(servicer.operations, settings.server(), security)
    runtime.bind(rest.start, settings.rest_host, settings.rest_port, "rest_port")
    server.start()
    log.info(
        "listening",
        extra={
            "fields": {
                "host": settings.grpc_host,
                "port": settings.grpc_port,
                "rest_host": settings.rest_host,
                "rest_port": rest.port,
                **describe(cpus),
            }
        },
    )

    runtime.check_redis(store.redis, settings.redis_url or settings.redis_sentinels)
    backbone = runtime.load_backbone(settings)
    plane = DataPlane(backbone, store, metrics, settings.serving())
    embed = frozen_token_embedder(backbone) if settings.backbone == "text" else pooled_pixels
    servicer.monitor = InferenceDriftMonitor(
        InferenceDriftMetrics(registry), embed, settings.monitor()
    )
    if settings.prediction_log:
        servicer.operations.prediction_log = PredictionLog(
            settings.prediction_log_config(),
            lambda: KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                linger_ms=50,
                acks=1,
                max_block_ms=5000,
                **settings.kafka_options(),
            ),
            metrics,
        ).start(stop)
    threading.Thread(target=plane.watch, args=(stop,), name="watcher", daemon=True).start()
    servicer.attach(plane)
    set_health(health_servicer, True)
    log.info("serving")

    stop.wait()
    servicer.drain(server, health_servicer, grace=settings.drain_seconds, others=[rest.stop])
    servicer.operations.prediction_log.close(timeout=settings.drain_seconds)
    tracing.shutdown()
    log.info("stopped")


def main() -> None:
    runtime.main("perennial-inference", InferenceSettings, serve)


if __name__ == "__main__":
    main()
