"""The prediction log: ids in the answers of both transports, rows on the real broker, and a
log that can never delay or fail a request (Kafka away, a producer that fell behind)."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.http as triton_http
from kafka import KafkaConsumer, KafkaProducer

from perennial.feedback import decode_prediction, prediction_time
from perennial_dev.localstack import create_topics
from services.inference.predictionlog import PredictionLog, PredictionLogConfig

from .conftest import TEXTS, publish


def logged(bootstrap: str, topic: str, count: int) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    records, deadline = [], time.monotonic() + 30
    while len(records) < count and time.monotonic() < deadline:
        records += list(consumer)
    consumer.close()
    return records


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()


def attach_log(service, stop, make_producer, **config) -> PredictionLog:
    metrics = service.servicer.operations.metrics
    log = PredictionLog(PredictionLogConfig(**config), make_producer, metrics).start(stop)
    service.servicer.operations.prediction_log = log
    return log


@pytest.mark.parametrize("inputs", ["text", "sha256"])
def test_every_row_of_both_transports_is_logged_under_the_id_the_client_got(
    service, learner, kafka_broker, stop, inputs
) -> None:
    topic = f"predictions.{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker.bootstrap, {topic: 1})
    publish(service.store, learner)
    log = attach_log(
        service.ready(),
        stop,
        lambda: KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5),
        topic=topic,
        log_inputs=inputs == "text",
    )
    grpc_reply = service.infer(TEXTS)
    grpc_ids = grpc_reply.get_response().parameters["prediction_id"].string_param.split(",")
    rest_reply = service.http_client().infer("demo", [_http_text(TEXTS[:1])])
    rest_ids = rest_reply.get_response()["parameters"]["prediction_id"].split(",")
    assert len(set(grpc_ids + rest_ids)) == 4 and all(prediction_time(i) for i in grpc_ids)
    log.close()
    rows = [decode_prediction(r.value) for r in logged(kafka_broker.bootstrap, topic, 4)]
    assert [r.prediction_id for r in rows] == grpc_ids + rest_ids
    served = [label.decode() for label in grpc_reply.as_numpy("label")]
    assert [r.label for r in rows[:3]] == served
    assert {r.adapter for r in rows} == {"demo"}
    version = grpc_reply.get_response().model_version
    assert {r.version for r in rows} == {version}
    assert set(rows[0].scores) == set(learner.classes)
    texts = TEXTS + TEXTS[:1]
    if inputs == "text":
        assert [r.text for r in rows] == texts and not any(r.input_sha256 for r in rows)
    else:
        assert not any(r.text for r in rows)
        assert [r.input_sha256 for r in rows] == [
            hashlib.sha256(t.encode()).hexdigest() for t in texts
        ]
    assert service.sample("perennial_inference_predictions_logged_total") == 4


def test_requests_are_answered_while_kafka_is_away_and_the_drops_are_counted(
    service, learner, stop
) -> None:
    publish(service.store, learner)

    def no_kafka():
        raise ConnectionError("no broker")

    attach_log(service.ready(), stop, no_kafka)
    for _ in range(3):
        reply = service.infer(TEXTS)
        assert reply.get_response().parameters["prediction_id"].string_param.count(",") == 2
    dropped = {"reason": "kafka"}
    deadline = time.monotonic() + 10
    while service.sample("perennial_inference_predictions_dropped_total", dropped) < 9:
        assert time.monotonic() < deadline, "the drops were never counted"
        time.sleep(0.05)


def test_a_producer_that_falls_behind_drops_rows_instead_of_delaying_requests(
    service, learner, stop
) -> None:
    publish(service.store, learner)
    entered, release = threading.Event(), threading.Event()

    def stuck_producer():
        entered.set()
        release.wait(30)
        raise ConnectionError("gave up")

    attach_log(service.ready(), stop, stuck_producer, queue_size=1)
    service.infer(TEXTS)  # taken by the log's thread, which then hangs in the producer
    assert entered.wait(10)
    started = time.monotonic()
    for _ in range(3):  # one waits in the queue, two find it full
        service.infer(TEXTS)
    assert time.monotonic() - started < 5
    full = {"reason": "queue_full"}
    assert service.sample("perennial_inference_predictions_dropped_total", full) == 6
    release.set()


def _http_text(texts):
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor
