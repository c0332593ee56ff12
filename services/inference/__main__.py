"""`python -m services.inference`: serve until SIGTERM, then drain. Configuration:
environment variables `PERENNIAL_*` (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import logging
import threading

import redis
from grpc_health.v1 import health

from perennial import runtime
from perennial.backbone import TextBackbone
from perennial.config import env
from perennial.metrics import InferenceMetrics
from perennial.serving import DataPlane
from perennial.store import SnapshotStore
from services.inference.server import InferenceServicer, build_server, set_health

log = logging.getLogger("perennial.inference")


def main() -> None:
    redis_url = env("PERENNIAL_REDIS_URL")
    address = f"{env('PERENNIAL_GRPC_HOST', '0.0.0.0')}:{env('PERENNIAL_GRPC_PORT', 8001, int)}"
    registry, stop = runtime.start("inference")
    metrics = InferenceMetrics(registry)
    servicer, health_servicer = InferenceServicer(metrics), health.HealthServicer()
    set_health(health_servicer, False)  # NOT_SERVING until the backbone is loaded
    server = build_server(servicer, health_servicer, workers=env("PERENNIAL_GRPC_WORKERS", 8, int))
    server.add_insecure_port(address)
    server.start()
    log.info("listening", extra={"fields": {"address": address}})

    store = SnapshotStore(redis.Redis.from_url(redis_url))
    store.redis.ping()
    plane = DataPlane(TextBackbone.load(env("PERENNIAL_BACKBONE_PATH", None)), store, metrics,
                      reconcile_seconds=env("PERENNIAL_RECONCILE_SECONDS", 10.0, float))
    threading.Thread(target=plane.watch, args=(stop,), name="watcher", daemon=True).start()
    servicer.plane = plane
    set_health(health_servicer, True)
    log.info("serving")

    stop.wait()
    servicer.draining = True
    set_health(health_servicer, False)
    server.stop(grace=env("PERENNIAL_DRAIN_SECONDS", 10.0, float)).wait()
    log.info("stopped")


if __name__ == "__main__":
    main()
