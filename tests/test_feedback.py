"""Delayed feedback on the real stack: inference logs its predictions to Kafka, a client sends
`{prediction_id, label}`, the trainer joins and learns each answer exactly once — across a
SIGKILL in the middle of the join — and dead-letters late, unknown and duplicate feedback."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
from kafka import KafkaConsumer, KafkaProducer

from perennial import codec
from perennial.feedback import (
    Feedback,
    decode_prediction,
    encode_feedback,
    encode_feedback_json,
    new_prediction_id,
    prediction_time,
)
from perennial.store import SnapshotStore
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import create_topics
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.e2e
LABELS = ("noun.animal", "noun.plant", "noun.artifact")
WORDS = {"noun.animal": "dog cat horse", "noun.plant": "oak fern moss", "noun.artifact": "car cup"}


def text(i: int) -> tuple[str, str]:
    label = LABELS[i % 3]
    return f"sample {i}: {WORDS[label]}", label


@pytest.fixture
def stack(kafka_broker, redis_server, redis_client, tmp_path, tiny_backbone_dir):
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "PERENNIAL_TOPIC": f"examples.{suffix}",
        "PERENNIAL_DEAD_LETTER_TOPIC": f"examples.{suffix}.dlq",
        "PERENNIAL_PREDICTIONS_TOPIC": f"predictions.{suffix}",
        "PERENNIAL_FEEDBACK_TOPIC": f"feedback.{suffix}",
    }
    create_topics(kafka_broker.bootstrap, {name: 1 for name in topics.values()})
    common = {"PERENNIAL_BACKBONE_PATH": tiny_backbone_dir, "PERENNIAL_TORCH_THREADS": 1}
    trainer_settings = {
        **common,
        **topics,
        "PERENNIAL_GROUP_ID": f"group-{suffix}",
        "PERENNIAL_FEEDBACK": "true",
        "PERENNIAL_FEEDBACK_WINDOW_SECONDS": 600,
        "PERENNIAL_FEEDBACK_WAIT_SECONDS": 2,
        "PERENNIAL_LEARNER": "simplecil",
        "PERENNIAL_BATCH_SIZE": 4,
        "PERENNIAL_BATCH_WAIT_SECONDS": "inf",
        "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 16,
        "PERENNIAL_SNAPSHOT_EVERY_SECONDS": "inf",
        "PERENNIAL_HOLDOUT_EVERY": 0,
    }
    started = []

    def trainer(log_name: str):
        service = start_trainer(
            tmp_path,
            bootstrap=kafka_broker.bootstrap,
            redis_url=redis_server.url,
            log_name=log_name,
            **trainer_settings,
        )
        started.append(service)
        return service

    inference = start_inference(
        tmp_path,
        redis_url=redis_server.url,
        **common,
        PERENNIAL_RECONCILE_SECONDS=1,
        PERENNIAL_PREDICTION_LOG="true",
        PERENNIAL_PREDICTION_LOG_TOPIC=topics["PERENNIAL_PREDICTIONS_TOPIC"],
        PERENNIAL_KAFKA_BOOTSTRAP=kafka_broker.bootstrap,
    )
    started.append(inference)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    yield {
        "topics": topics,
        "trainer": trainer,
        "inference": inference,
        "producer": producer,
        "bootstrap": kafka_broker.bootstrap,
        "store": SnapshotStore(redis.Redis.from_url(redis_server.url)),
        "adapter": f"fb-{suffix}",
    }
    producer.close()
    for service in started:
        service.stop()


def read(bootstrap: str, topic: str, count: int, deadline: float = 60) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    records, ends = [], time.monotonic() + deadline
    while len(records) < count and time.monotonic() < ends:
        records += list(consumer)
    consumer.close()
    return records


def test_feedback_is_joined_and_learned_exactly_once_across_a_trainer_kill(stack) -> None:
    adapter, store, producer = stack["adapter"], stack["store"], stack["producer"]
    topics = stack["topics"]
    first = stack["trainer"]("trainer-1.log")
    for i in range(16):
        content, label = text(i)
        example = codec.Example(adapter, f"e{i}", content, label, time.time())
        producer.send(topics["PERENNIAL_TOPIC"], key=adapter.encode(), value=codec.encode(example))
    producer.flush()
    wait_for(lambda: store.head(adapter), 120, "the first snapshot (16 examples)")

    # 16 predictions, served and logged; the response names each row's prediction id
    client = triton.InferenceServerClient(stack["inference"].grpc_address)
    rows = [text(i) for i in range(100, 116)]
    tensor = triton.InferInput("text", [len(rows)], "BYTES")
    tensor.set_data_from_numpy(np.array([r[0].encode() for r in rows], dtype=np.object_))
    reply = wait_for(
        lambda: _infer(client, adapter, tensor), 60, "the inference service to serve the adapter"
    )
    ids = reply.get_response().parameters["prediction_id"].string_param.split(",")
    served = [label.decode() for label in reply.as_numpy("label")]
    assert len(set(ids)) == 16 and all(prediction_time(i) for i in ids)
    logged = read(stack["bootstrap"], topics["PERENNIAL_PREDICTIONS_TOPIC"], 16)
    decoded = [decode_prediction(r.value) for r in logged]
    assert [p.prediction_id for p in decoded] == ids
    assert [p.text for p in decoded] == [r[0] for r in rows]
    assert [p.label for p in decoded] == served and {r.key for r in logged} == {adapter.encode()}
    assert all(abs(sum(p.scores.values()) - 1) < 1e-3 for p in decoded)

    def feedback(i: int, event_time: float | None = None) -> bytes:
        answer = Feedback(ids[i], rows[i][1], event_time or time.time())
        return encode_feedback_json(answer) if i % 2 else encode_feedback(answer)

    # phase 1: 8 answers (two micro-batches, learned but not in a snapshot), then a duplicate,
    # an unknown prediction and a late answer
    late = prediction_time(ids[9]) + 601
    values = [feedback(i) for i in range(8)]
    values += [feedback(0), _unknown(), feedback(9, event_time=late)]
    for value in values:
        producer.send(topics["PERENNIAL_FEEDBACK_TOPIC"], value=value)
    producer.flush()
    wait_for(
        lambda: metric(first, "perennial_trainer_examples_consumed_total", adapter=adapter) == 24,
        60,
        "the first trainer to learn 8 answers",
    )
    dead = read(stack["bootstrap"], topics["PERENNIAL_DEAD_LETTER_TOPIC"], 3)
    assert _reasons(dead) == {8: "DuplicateFeedback", 9: "UnknownPrediction", 10: "LateFeedback"}
    assert store.head(adapter).examples == 16
    first.process.kill()  # SIGKILL in the middle of the join: 8 answers learned, none snapshotted

    second = stack["trainer"]("trainer-2.log")
    values = [feedback(1)] + [feedback(i) for i in range(8, 16)]  # a duplicate across the kill
    for value in values:
        producer.send(topics["PERENNIAL_FEEDBACK_TOPIC"], value=value)
    producer.flush()
    wait_for(
        lambda: store.head(adapter).examples == 32,
        120,
        "a snapshot with the 16 examples and the 16 answers",
        seen=lambda: store.head(adapter),
    )
    head = store.head(adapter)
    assert head.offsets[f"{topics['PERENNIAL_FEEDBACK_TOPIC']}:0"] == 20
    assert head.offsets[f"{topics['PERENNIAL_TOPIC']}:0"] == 16
    assert f"{topics['PERENNIAL_PREDICTIONS_TOPIC']}:0" in head.offsets
    # the restarted trainer learned the 8 unsnapshotted answers again and the 8 new ones
    assert metric(second, "perennial_trainer_examples_consumed_total", adapter=adapter) == 16
    correct = sum(served[i] == rows[i][1] for i in range(16))
    right = metric(
        second, "perennial_trainer_feedback_joined_total", adapter=adapter, served="correct"
    )
    wrong = metric(
        second, "perennial_trainer_feedback_joined_total", adapter=adapter, served="wrong"
    )
    assert (right, wrong) == (correct, 16 - correct)
    dead = read(stack["bootstrap"], topics["PERENNIAL_DEAD_LETTER_TOPIC"], 7)
    assert _reasons(dead) == {
        8: "DuplicateFeedback",
        9: "UnknownPrediction",
        10: "LateFeedback",
        11: "DuplicateFeedback",
    }
    assert metric(stack["inference"], "perennial_inference_predictions_logged_total") == 16


def _infer(client, adapter: str, tensor):
    try:
        return client.infer(adapter, [tensor])
    except triton.InferenceServerException:
        return None


def _unknown() -> bytes:
    return encode_feedback(Feedback(new_prediction_id(), "noun.animal", time.time()))


def _reasons(records) -> dict[int, str]:
    """Source offset -> reason of the dead letters (a re-read after the kill repeats some)."""
    reasons = {}
    for record in records:
        headers = dict(record.headers)
        reasons[int(headers["perennial.source.offset"])] = headers["perennial.error.class"].decode()
    return reasons
