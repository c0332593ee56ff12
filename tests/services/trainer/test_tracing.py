"""Traces: one example's producer span links to the micro-batch that learns it, which links to
the snapshot that contains it; the context travels in Kafka headers (SDK in-memory exporter)."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from perennial import codec, tracing
from perennial.learners import LearnerConfig
from perennial.store import SnapshotStore
from perennial_dev.localstack import create_topics
from services.trainer.events import EventPublisher
from services.trainer.ingest import incoming_of
from services.trainer.metrics import TrainerMetrics
from services.trainer.settings import TrainerSettings
from services.trainer.worker import Trainer

LABELS = ("animal", "plant")


def consume_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    assert len(records) == count, f"consumed {len(records)} of {count} records"
    return records


def test_produce_learn_snapshot_are_linked_through_kafka_headers(
    kafka_broker, redis_client, tiny_backbone
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.tracer(provider)
    topic = f"perennial.examples.{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker.bootstrap, {topic: 1})

    # A producer that traces: its span's context goes into the record's headers. The
    # other records are sent without any context (producers that do not trace).
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    examples = [
        codec.Example("ad", str(i), f"text number {i}", LABELS[i % 2], 1.0) for i in range(8)
    ]
    for i, example in enumerate(examples):
        if i == 3:
            with tracer.start_as_current_span("produce") as produce:
                headers = tracing.inject_headers()
        else:
            headers = []
        producer.send(topic, key=b"ad", value=codec.encode(example), headers=headers)
    producer.flush()
    producer.close()
    records = consume_all(kafka_broker.bootstrap, topic, len(examples))
    incoming = [
        incoming_of(r, codec.decode(r.value, key=r.key, timestamp_ms=r.timestamp)) for r in records
    ]
    assert [r.link is not None for r in incoming] == [i == 3 for i in range(8)]
    assert incoming[3].link.context.span_id == produce.get_span_context().span_id

    settings = TrainerSettings(
        kafka_bootstrap="unused:9092",
        redis_url="redis://unused",
        batch_size=4,
        snapshot_every_examples=8,
        snapshot_every_seconds=3600,
        batch_wait_seconds=3600,
        holdout_every=0,
    )
    trainer = Trainer(
        settings,
        tiny_backbone,
        SnapshotStore(redis_client),
        TrainerMetrics(CollectorRegistry()),
        EventPublisher(lambda *args: None, "perennial.events", "test"),
        LearnerConfig(learner="simplecil"),
        tracer=tracer,
    )
    trainer.deliver(incoming)
    trainer.work_once(timeout=0)

    spans = exporter.get_finished_spans()
    learns = [s for s in spans if s.name == "learn"]
    [snapshot] = [s for s in spans if s.name == "snapshot"]
    assert len(learns) == 2  # two micro-batches of 4
    [learn] = [s for s in learns if s.links]  # the batch holding the traced example
    assert [link.context.span_id for link in learn.links] == [produce.get_span_context().span_id]
    assert learn.attributes["perennial.adapter"] == "ad"
    assert learn.attributes["perennial.kafka.offsets"] == (f"{topic}:0=0-3",)
    assert {link.context.span_id for link in snapshot.links} == {
        s.get_span_context().span_id for s in learns
    }
    manifest = SnapshotStore(redis_client).latest("ad")
    assert snapshot.attributes["perennial.adapter"] == "ad"
    assert snapshot.attributes["perennial.version"] == manifest.version
    assert snapshot.attributes["perennial.kafka.offsets"] == (f"{topic}:0=8",)


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.configure("perennial-test", "") is False
    assert tracing.server_interceptors(False) == []
    assert tracing.extract_link([("other", b"x")]) is None
    assert tracing.extract_link(None) is None
