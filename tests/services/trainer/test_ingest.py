"""The trainer's Kafka consumer is built from its settings."""

from __future__ import annotations

from perennial.learners import LearnerConfig
from services.trainer.ingest import Ingest
from tests.services.trainer.conftest import in_process_trainer


def test_the_consumer_fetches_with_the_configured_wait(kafka_broker, redis_client, tiny_backbone):
    # Tansu answers a fetch only at its deadline: this wait is added to every record's freshness
    # (kafka-python's default is 500 ms; `make bench-training` measures what it costs).
    trainer = in_process_trainer(
        redis_client,
        tiny_backbone,
        LearnerConfig(learner="ranpac"),
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_fetch_max_wait_ms=35,
    )
    ingest = Ingest(trainer.settings, trainer, trainer.metrics, None, trainer.events)
    try:
        assert ingest.consumer.config["fetch_max_wait_ms"] == 35
        assert ingest.consumer.config["group_id"] == trainer.settings.group_id
    finally:
        ingest.consumer.close()
