"""`python -m services.trainer`: run the trainer until SIGTERM. Configuration: environment
variables `PERENNIAL_*` (see README.md)."""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health
from kafka import KafkaProducer

from perennial import device, redis_connect, runtime
from perennial.backbone import TextBackbone
from perennial.config import env
from perennial.grpc_security import ServerSecurity
from perennial.store import SnapshotStore
from services.trainer.control import ControlServicer, build_control_server, set_health
from services.trainer.events import EventPublisher
from services.trainer.ingest import Ingest
from services.trainer.kube_events import EventRecorder
from services.trainer.metrics import TrainerMetrics
from services.trainer.monitor import TrainerDriftMonitor
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Trainer

log = logging.getLogger(__name__)


def main() -> None:
    settings = TrainerSettings.from_env()
    ServerSecurity.from_env()  # fail before loading anything if TLS or token settings are wrong
    registry, stop = runtime.start("trainer")
    metrics = TrainerMetrics(registry)
    health_servicer = health.HealthServicer()
    set_health(health_servicer, False)

    store = SnapshotStore(redis_connect.connect(settings.redis_url))
    store.redis.ping()  # fail at start, with the URL's error, if Redis is unreachable
    backbone = TextBackbone.load(env("PERENNIAL_BACKBONE_PATH", None)).to(
        device.select(env("PERENNIAL_DEVICE", "auto"))
    )
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_security
    )
    events = EventPublisher(
        producer.send,
        settings.events_topic,
        settings.source,
        kubernetes=EventRecorder.from_environment(),
    )
    trainer = Trainer(
        settings, backbone, store, metrics, events, drift=TrainerDriftMonitor.from_env(registry)
    )
    ingest = Ingest(settings, trainer, metrics, producer, events)

    security = ServerSecurity.from_env()
    server = build_control_server(
        ControlServicer(trainer, ingest), health_servicer, interceptors=security.interceptors()
    )
    security.add_port(server, f"{env('PERENNIAL_CONTROL_HOST', '0.0.0.0')}:{settings.control_port}")
    server.start()
    training = threading.Thread(target=trainer.run, args=(stop,), name="training")
    training.start()
    set_health(health_servicer, True)
    log.info("serving", extra={"fields": {"control_port": settings.control_port}})
    try:
        ingest.run(stop)
    finally:
        stop.set()
        set_health(health_servicer, False)
        training.join()  # its last act is a final snapshot
        ingest.close()  # commits what that snapshot covers
        server.stop(grace=5).wait()
        producer.close()


if __name__ == "__main__":
    main()
