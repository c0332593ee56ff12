"""`python -m services.inference`: serve until SIGTERM, then drain. Configuration:
environment variables `PERENNIAL_*` (README.md, "Configuration")."""

from __future__ import annotations

import logging
import threading

import redis
from grpc_health.v1 import health

from perennial import runtime
from perennial.backbone import TextBackbone
from perennial.config import env
from perennial.grpc_security import ServerSecurity
from perennial.store import SnapshotStore
from services.inference.batching import BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.monitor import InferenceDriftMonitor
from services.inference.plane import DataPlane, ServingConfig
from services.inference.server import InferenceServicer, ServerConfig, build_server, set_health

log = logging.getLogger(__name__)


def main() -> None:
    redis_url = env("PERENNIAL_REDIS_URL")
    address = f"{env('PERENNIAL_GRPC_HOST', '0.0.0.0')}:{env('PERENNIAL_GRPC_PORT', 8001, int)}"
    batching = BatchingConfig(
        max_batch_size=env("PERENNIAL_MAX_BATCH_SIZE", 64, int),
        max_queue_delay_seconds=env("PERENNIAL_MAX_QUEUE_DELAY_MS", 2.0, float) / 1000,
        max_queue_size=env("PERENNIAL_MAX_QUEUE_SIZE", 256, int),
    )
    serving = ServingConfig(
        memory_bytes=env("PERENNIAL_ADAPTER_MEMORY_BYTES", 1 << 30, int),
        max_text_chars=env("PERENNIAL_MAX_TEXT_CHARS", 4096, int),
        max_rows=batching.max_batch_size,
        reconcile_seconds=env("PERENNIAL_RECONCILE_SECONDS", 10.0, float),
    )
    server_config = ServerConfig(
        workers=env("PERENNIAL_GRPC_WORKERS", 128, int),
        max_message_bytes=env("PERENNIAL_MAX_MESSAGE_BYTES", 16 << 20, int),
    )
    security = ServerSecurity.from_env()
    registry, stop = runtime.start("inference")
    metrics = InferenceMetrics(registry)
    servicer, health_servicer = InferenceServicer(metrics, batching), health.HealthServicer()
    set_health(health_servicer, False)  # NOT_SERVING until the backbone is loaded
    server = build_server(servicer, health_servicer, server_config, security)
    security.add_port(server, address)
    server.start()
    log.info("listening", extra={"fields": {"address": address}})

    store = SnapshotStore(redis.Redis.from_url(redis_url))
    store.redis.ping()
    backbone = TextBackbone.load(env("PERENNIAL_BACKBONE_PATH", None))
    plane = DataPlane(backbone, store, metrics, serving)
    servicer.monitor = InferenceDriftMonitor.from_env(registry, backbone)
    threading.Thread(target=plane.watch, args=(stop,), name="watcher", daemon=True).start()
    servicer.attach(plane)
    set_health(health_servicer, True)
    log.info("serving")

    stop.wait()
    servicer.drain(server, health_servicer, grace=env("PERENNIAL_DRAIN_SECONDS", 10.0, float))
    log.info("stopped")


if __name__ == "__main__":
    main()
