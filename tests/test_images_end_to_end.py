"""Images through the real stack: Fashion-MNIST tensors on Kafka (Tansu) → an image trainer →
Redis → an image inference service → gRPC and REST clients, the services as processes.

Small on purpose (CI runs it on 2 cores): four classes, 24 images each, the backbone at 32 px.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from kafka import KafkaConsumer, KafkaProducer
from tritonclient.utils import InferenceServerException

from perennial import codec
from perennial.store import SnapshotStore
from perennial_dev.datasets.fashion_mnist import class_incremental_images
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import create_topics
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.e2e
ADAPTER = "fashion"
IMAGES = {  # both services: the image backbone, grey 28×28 images resized to 32 px
    "PERENNIAL_BACKBONE": "image",
    "PERENNIAL_IMAGE_SHAPE": "1,28,28",
    "PERENNIAL_IMAGE_SIZE": 32,
}


def _infer(client, batch: np.ndarray):
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return client.infer(ADAPTER, [tensor])


def _served_version(client) -> str:
    try:
        return _infer(client, np.zeros((1, 28, 28), np.float32)).get_response().model_version
    except InferenceServerException:
        return ""


def test_fashion_mnist_streams_through_both_services(kafka_broker, redis_server, tmp_path):
    split = class_incremental_images(classes_per_stage=2, train_per_class=24, test_per_class=8)
    classes = [label for stage in split.stages[:2] for label in stage]
    train = [(image, label) for image, label in split.train if label in classes]
    suffix = uuid.uuid4().hex[:8]
    topic = f"perennial.examples.{suffix}"
    create_topics(kafka_broker.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    inference = start_inference(
        tmp_path, redis_url=redis_server.url, PERENNIAL_RECONCILE_SECONDS=2, **IMAGES
    )
    trainer = start_trainer(
        tmp_path,
        bootstrap=kafka_broker.bootstrap,
        redis_url=redis_server.url,
        PERENNIAL_TOPIC=topic,
        PERENNIAL_DEAD_LETTER_TOPIC=f"{topic}.dlq",
        PERENNIAL_GROUP_ID=f"trainer-{suffix}",
        PERENNIAL_BATCH_SIZE=16,
        PERENNIAL_BATCH_WAIT_SECONDS=1.0,
        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=48,
        PERENNIAL_SNAPSHOT_EVERY_SECONDS=3,
        PERENNIAL_WARMUP_EXAMPLES=16,  # the window closes at 64 images: the PET adapts
        PERENNIAL_PROJECTION_DIM=256,
        **IMAGES,
    )
    producer = KafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", max_request_size=4 << 20
    )
    try:
        # two records the image deployment refuses, then the stream (every fifth as JSON)
        text = codec.Example(ADAPTER, "t", "a shirt", "Shirt", 1.0)
        small = codec.Example(
            ADAPTER, "s", "", "Shirt", 1.0, codec.Tensor.from_array(np.zeros((1, 14, 14)))
        )
        for example in (text, small):
            producer.send(topic, key=ADAPTER.encode(), value=codec.encode(example))
        for index, (image, label) in enumerate(train):
            example = codec.Example(
                ADAPTER, str(index), "", label, 1.7e9 + index, codec.Tensor.from_array(image[None])
            )
            encode = codec.encode_json if index % 5 == 4 else codec.encode
            producer.send(topic, key=ADAPTER.encode(), value=encode(example))
        producer.flush()
        total = len(train) + 2
        store = SnapshotStore(redis.Redis.from_url(redis_server.url))

        def covered():
            head = store.head(ADAPTER)
            return head if head and head.offsets.get(f"{topic}:0", 0) >= total else None

        head = wait_for(covered, 240, "a version covering the whole stream", interval=0.5)
        assert sorted(head.classes) == sorted(classes)

        client = triton.InferenceServerClient(inference.grpc_address)
        wait_for(lambda: _served_version(client) == head.version, 60, "inference serving the head")
        test = [(image, label) for label in classes for image in split.test[label]]
        grey = np.stack([image.numpy() for image, _ in test]).astype(np.float32)
        result = _infer(client, grey)  # [N, 28, 28]
        labels = [label.decode() for label in result.as_numpy("label")]
        accuracy = np.mean([p == t for p, t in zip(labels, [t for _, t in test], strict=True)])
        assert accuracy >= 0.5, f"accuracy {accuracy:.2f} on {len(test)} held-out images"
        with_channel = _infer(client, grey[:4, None])  # [N, 1, 28, 28]: the same answers
        assert [x.decode() for x in with_channel.as_numpy("label")] == labels[:4]
        metadata = client.get_model_metadata(ADAPTER)
        assert [list(t.shape) for t in metadata.inputs] == [[-1, 1, 28, 28]]

        with pytest.raises(InferenceServerException) as caught:
            _infer(client, np.zeros((2, 3, 28, 28), np.float32))
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "send [N, 1, 28, 28]" in caught.value.message()

        http = triton_http.InferenceServerClient(inference.rest_address)
        tensor = triton_http.InferInput("image", [2, 28, 28], "FP32")
        tensor.set_data_from_numpy(grey[:2])
        assert [x.decode() for x in http.infer(ADAPTER, [tensor]).as_numpy("label")] == labels[:2]

        shapes = [(2, 28, 28), (2, 32, 32), (1, 1, 28, 28), (1, 3, 28, 28)] * 6

        def call(shape):
            try:
                _infer(client, np.full(shape, 0.5, np.float32))
            except InferenceServerException as error:
                return shape, error.status()
            return shape, "StatusCode.OK"

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, shapes))
        for shape, status in answers:
            right = shape[1:] in ((28, 28), (1, 28, 28))
            assert status == ("StatusCode.OK" if right else "StatusCode.INVALID_ARGUMENT"), shape
        assert metric(inference, "perennial_inference_requests_total", code="INTERNAL") == 0
        wait_for(  # input drift is watched on images too (pooled pixels), off the request path
            lambda: metric(
                inference, "perennial_inference_drift_observations_total", adapter=ADAPTER
            ),
            30,
            "drift observations of images",
        )

        consumer = KafkaConsumer(
            f"{topic}.dlq",
            bootstrap_servers=kafka_broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        dead = [record for record, _ in zip(consumer, range(2), strict=False)]
        consumer.close()
        reasons = [dict(r.headers)["perennial.error.class"].decode() for r in dead]
        assert reasons == ["UnsupportedInput", "InvalidShape"]
        assert "[1, 14, 14]" in dict(dead[1].headers)["perennial.error.message"].decode()
    finally:
        producer.close()
        trainer.stop()
        inference.stop()
    print(json.dumps({"images_accuracy": float(accuracy), "examples": head.examples}))
