"""The whole loop on the real local stack: Kafka (Tansu) → trainer → Redis → inference → client.

The services run as separate processes, started the way the demo starts them.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
from kafka import KafkaConsumer, KafkaProducer
from tritonclient.utils import InferenceServerException

from perennial import codec
from perennial.store import SnapshotStore
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import create_topics
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.e2e
ADAPTER = "wordnet"


@pytest.fixture
def split():
    return class_incremental_split(
        read_noun_glosses(),
        num_classes=4,
        classes_per_stage=2,
        train_per_class=32,
        test_per_class=10,
        seed=1,
    )


@pytest.fixture
def stream(kafka_broker, redis_server, redis_client, tmp_path):
    """Fresh topics and group for one test; the trainer and inference services it starts are stopped."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"perennial.examples.{suffix}"
    create_topics(kafka_broker.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    started = []
    settings = {
        "PERENNIAL_TOPIC": topic,
        "PERENNIAL_DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "PERENNIAL_GROUP_ID": f"trainer-{suffix}",
        "PERENNIAL_BATCH_SIZE": 16,
        "PERENNIAL_BATCH_WAIT_SECONDS": 1.0,
        "PERENNIAL_HOLDOUT_EVERY": 0,
    }

    def trainer(log_name="trainer.log", **overrides):
        service = start_trainer(
            tmp_path,
            bootstrap=kafka_broker.bootstrap,
            redis_url=redis_server.url,
            log_name=log_name,
            **{**settings, **overrides},
        )
        started.append(service)
        return service

    def inference():
        service = start_inference(
            tmp_path, redis_url=redis_server.url, PERENNIAL_RECONCILE_SECONDS=2
        )
        started.append(service)
        return service

    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")

    def produce(glosses, *, json_every: int = 0):
        for index, gloss in enumerate(glosses):
            example = codec.Example(ADAPTER, gloss.synset, gloss.text, gloss.label, time.time())
            encode = codec.encode_json if json_every and index % json_every == 0 else codec.encode
            producer.send(topic, key=ADAPTER.encode(), value=encode(example))
        producer.flush()

    yield {
        "topic": topic,
        "trainer": trainer,
        "inference": inference,
        "produce": produce,
        "producer": producer,
        "store": SnapshotStore(redis.Redis.from_url(redis_server.url)),
    }
    producer.close()
    for service in started:
        service.stop()


def infer(client, texts):
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(data)
    result = client.infer(ADAPTER, [tensor])
    return result.get_response().model_version, [x.decode() for x in result.as_numpy("label")]


def test_stream_learn_snapshot_hot_swap_and_serve(stream, split):
    inference = stream["inference"]()
    trainer = stream["trainer"](
        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=32, PERENNIAL_SNAPSHOT_EVERY_SECONDS=3
    )
    test = [g for glosses in split.test.values() for g in glosses]
    queried, failures, stop = [], [], threading.Event()

    def query_continuously():
        client = triton.InferenceServerClient(inference.grpc_address)
        while not stop.is_set():
            try:
                queried.append(infer(client, [g.text for g in test[:8]])[0])
            except InferenceServerException as error:
                if queried or "no snapshot yet" not in str(
                    error
                ):  # before the first snapshot: expected
                    failures.append(str(error))

    client_thread = threading.Thread(target=query_continuously)
    client_thread.start()
    try:
        stream["produce"](split.train, json_every=5)
        for bad in (b"\x08\x96\x01garbage", b'{"adapter": "wordnet", "text": "no label"}'):
            stream["producer"].send(stream["topic"], key=ADAPTER.encode(), value=bad)
        stream["producer"].flush()
        total = len(split.train)
        wait_for(
            lambda: (
                (queried and stream["store"].manifest(ADAPTER, queried[-1]) or None)
                and stream["store"].manifest(ADAPTER, queried[-1]).examples == total
            ),
            180,
            f"a served version containing all {total} examples",
        )
    finally:
        stop.set()
        client_thread.join()

    assert failures == []
    assert len(set(queried)) >= 2, "the served version never advanced while requests were flowing"
    client = triton.InferenceServerClient(inference.grpc_address)
    version, predicted = infer(client, [g.text for g in test])
    accuracy = np.mean([p == g.label for p, g in zip(predicted, test, strict=False)])
    assert accuracy > 0.5, f"accuracy on seen classes {accuracy:.2f} (chance 0.25)"

    assert metric(trainer, "perennial_trainer_examples_consumed_total", adapter=ADAPTER) == total
    assert (
        metric(inference, "perennial_inference_freshness_seconds_count", adapter=ADAPTER) >= total
    )
    assert metric(inference, "perennial_inference_requests_total", adapter=ADAPTER, code="OK") > 0

    dead = KafkaConsumer(
        f"{stream['topic']}.dlq",
        bootstrap_servers=trainer_bootstrap(stream),
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    records = [next(dead), next(dead)]
    dead.close()
    reasons = sorted(dict(r.headers)["perennial.error.class"].decode() for r in records)
    assert reasons == ["MalformedProtobuf", "MissingLabel"]


def trainer_bootstrap(stream) -> str:
    return stream["producer"].config["bootstrap_servers"]


def test_trainer_killed_and_restarted_resumes_from_its_checkpoint(stream, split):
    store, train = stream["store"], list(split.train)
    settings = {
        "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 32,
        "PERENNIAL_SNAPSHOT_EVERY_SECONDS": 3600,
        "PERENNIAL_BATCH_WAIT_SECONDS": 3600,
    }
    first = stream["trainer"](**settings)
    stream["produce"](
        train[:80]
    )  # 5 batches: snapshots after 32 and 64, 16 applied but unsnapshotted
    wait_for(
        lambda: metric(first, "perennial_trainer_examples_consumed_total", adapter=ADAPTER) == 80,
        120,
        "the first trainer to apply 80 examples",
    )
    head = store.head(ADAPTER)
    assert head.examples == 64 and head.offsets == {f"{stream['topic']}:0": 64}
    checkpoint = store.manifest(ADAPTER, head.resume_version)  # where a restart resumes from
    assert checkpoint.examples in (32, 64)  # the first version (the next is due 30 s later)
    first.process.kill()  # SIGKILL: no chance to snapshot the last 16

    second = stream["trainer"]("trainer-2.log", **settings)
    stream["produce"](train[80:])
    wait_for(
        lambda: store.head(ADAPTER).examples == len(train), 120, "the restarted trainer's snapshots"
    )
    head = store.head(ADAPTER)
    assert head.offsets == {f"{stream['topic']}:0": len(train)}
    # the restarted trainer applied exactly the examples its checkpoint did not contain, and
    # published nothing until it had passed the version it found
    applied = metric(second, "perennial_trainer_examples_consumed_total", adapter=ADAPTER)
    assert applied == len(train) - checkpoint.examples
    sequences = [store.manifest(ADAPTER, v).examples for v in store.versions(ADAPTER)]
    assert sequences == [32, 64, 96, 128]
