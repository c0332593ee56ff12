"""`python -m services.trainer`: run the trainer until SIGTERM. Configuration: the
`PERENNIAL_*` variables of `TrainerSettings` (`--help` lists them)."""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health
from kafka import KafkaProducer
from kafka.errors import KafkaError

from perennial import device, redis_connect, runtime, tracing
from perennial.grpc_security import ServerSecurity
from perennial.store import SnapshotStore
from services.trainer.control import ControlServicer, build_control_server, set_health
from services.trainer.events import EventPublisher
from services.trainer.ingest import Ingest
from services.trainer.kube_events import EventRecorder
from services.trainer.liveness import Watchdog
from services.trainer.metrics import TrainerDriftMetrics, TrainerMetrics
from services.trainer.monitor import TrainerDriftMonitor
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Trainer

log = logging.getLogger(__name__)


def serve(settings: TrainerSettings) -> None:
    """Start, consume and train until SIGTERM, then snapshot and commit."""
    security = ServerSecurity.from_settings(settings)  # unreadable files fail before any loading
    where = device.select(settings.device)
    store = SnapshotStore(
        redis_connect.connect(settings),
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    registry, stop = runtime.start("trainer", settings)
    metrics = TrainerMetrics(registry)
    health_servicer = health.HealthServicer()
    set_health(health_servicer, False)  # NOT_SERVING, control calls UNAVAILABLE, until attached
    control = ControlServicer()
    server = build_control_server(
        control,
        health_servicer,
        interceptors=[
            *tracing.server_interceptors(bool(settings.tracing_endpoint)),
            *security.interceptors(),
        ],
    )
    runtime.listen(server, security, settings.control_host, settings.control_port, "control_port")
    server.start()

    runtime.check_redis(store.redis, settings.redis_url or settings.redis_sentinels)
    backbone = runtime.load_backbone(settings, where)
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_options()
        )
    except KafkaError as error:
        raise runtime.StartupError(
            f"Kafka at {settings.kafka_bootstrap} is not usable: {error}"
        ) from None
    kubernetes = EventRecorder.for_pod(
        settings.pod_name,
        settings.pod_namespace,
        settings.pod_uid,
        enabled=settings.kubernetes_events,
    )
    events = EventPublisher(
        producer.send, settings.events_topic, settings.source, kubernetes=kubernetes
    )
    drift = TrainerDriftMonitor(
        TrainerDriftMetrics(registry),
        queue_size=settings.drift_queue_size,
        forgetting_every_seconds=settings.forgetting_every_seconds,
    )
    trainer = Trainer(settings, backbone, store, metrics, events, drift=drift)
    ingest = Ingest(settings, trainer, metrics, producer, events)
    control.attach(trainer, ingest)
    training = threading.Thread(target=trainer.run, args=(stop,), name="training")
    training.start()
    set_health(health_servicer, True)
    watchdog = Watchdog(
        {
            "training": (training.is_alive, lambda: trainer.heartbeat),
            "poll": (lambda: True, lambda: ingest.heartbeat),  # the main thread: exits if it dies
        },
        settings.stall_seconds,
        metrics,
        lambda serving: set_health(health_servicer, serving and not stop.is_set()),
    )
    threading.Thread(target=watchdog.run, args=(stop,), name="watchdog", daemon=True).start()
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
        tracing.shutdown()


def main() -> None:
    runtime.main("perennial-trainer", TrainerSettings, serve)


if __name__ == "__main__":
    main()
