"""Dynamic batching: concurrent requests share model calls and get exactly the unbatched answers,
also when one batch mixes adapters (one forward with per-row LoRA weights)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.inference.batching import Batcher, BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.model import predict, predict_grouped
from services.inference.tensors import decode_bytes, encode_bytes

from .conftest import make_learner, publish

QUERIES = [
    "a small dog",
    "a tall tree with leaves",
    "an old house",
    "a fox",
    "a stone bridge over a river",
    "green moss",
    "a cat",
    "a barn",
]


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _request(adapter: str, texts: list[str]):
    request = service_pb2.ModelInferRequest(model_name=adapter)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(encode_bytes([t.encode() for t in texts]))
    return request


def _probabilities(response) -> np.ndarray:
    index = [o.name for o in response.outputs].index("probabilities")
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(
        list(response.outputs[index].shape)
    )


def test_rowwise_multi_adapter_forward_equals_each_models_own_scores(service, tiny_backbone):
    adapters = {
        "a": make_learner(tiny_backbone, seed=1, rank=2),
        "b": make_learner(tiny_backbone, seed=2, rank=4),
    }
    adapters["b"].learn(["a red fox", "a pine"], ["fox", "tree"])  # different class count too
    for name, learner in adapters.items():
        publish(service.store, learner, adapter=name)
    served = {name: service.plane.get(name) for name in adapters}
    work = [(served["a"], QUERIES[:3]), (served["b"], QUERIES[3:5]), (served["a"], QUERIES[5:])]
    fused, grouped = predict(tiny_backbone, work), predict_grouped(tiny_backbone, work)
    for (version, texts), scores, reference in zip(work, fused, grouped, strict=True):
        with torch.inference_mode():
            own = version.model.scores(tiny_backbone, texts)
        torch.testing.assert_close(scores, own, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reference, own, atol=1e-5, rtol=1e-4)


def test_concurrent_mixed_adapter_requests_share_one_batch_and_match_unbatched(
    start_service, tiny_backbone
):
    service = start_service(batching=BatchingConfig(max_batch_size=64, max_queue_delay_seconds=0.0))
    learners = {f"ad-{i}": make_learner(tiny_backbone, seed=i) for i in range(3)}
    for name, learner in learners.items():
        publish(service.store, learner, adapter=name)
    service.ready()
    expected = {}
    for i, text in enumerate(QUERIES):
        adapter = f"ad-{i % 3}"
        expected[i] = service.plane.infer(
            adapter, "", [text]
        ).scores.numpy()  # unbatched, one at a time
    gate = service.gate_model()
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    first = stub.ModelInfer.future(_request("ad-0", ["a warm-up request"]))
    batcher = service.servicer.batcher
    _wait(lambda: service.sample("perennial_inference_queue_duration_seconds_count") == 1)
    calls = {
        i: stub.ModelInfer.future(_request(f"ad-{i % 3}", [text])) for i, text in enumerate(QUERIES)
    }
    _wait(lambda: batcher._rows == len(QUERIES))
    gate.set()
    assert first.result().model_version
    for i, call in calls.items():
        response = call.result()
        assert response.model_name == f"ad-{i % 3}"
        labels = decode_bytes(response.raw_output_contents[1], 1)
        np.testing.assert_allclose(_probabilities(response), expected[i], atol=1e-5)
        assert labels[0].decode() in learners[f"ad-{i % 3}"].classes
    # two model calls: the warm-up alone, then all eight requests of three adapters together
    assert service.sample("perennial_inference_batch_size_rows_count") == 2
    assert service.sample("perennial_inference_batch_size_rows_sum") == 1 + len(QUERIES)


@pytest.mark.parametrize("delay", [0.0, 0.002])
def test_many_threads_get_the_same_answers_as_unbatched(start_service, learner, delay):
    service = start_service(
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_seconds=delay)
    )
    publish(service.store, learner)
    service.ready()
    expected = {text: service.plane.infer("demo", "", [text]).scores.numpy() for text in QUERIES}
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    calls = [
        (text, stub.ModelInfer.future(_request("demo", [text]))) for text in QUERIES * 2
    ]  # within the 16 workers
    for text, call in calls:
        np.testing.assert_allclose(_probabilities(call.result()), expected[text], atol=1e-5)


def test_stop_finishes_queued_jobs_and_rejects_new_ones():
    from perennial.errors import NotReady

    batcher = Batcher(
        lambda work: [len(rows) for _, rows in work],
        BatchingConfig(max_batch_size=4),
        InferenceMetrics(CollectorRegistry()),
    )
    jobs = [batcher.submit("k", ["x"] * n) for n in (1, 2, 3)]  # queued before the thread starts
    batcher.start()
    batcher.stop(timeout=5)
    assert [batcher.result(job, None) for job in jobs] == [1, 2, 3]
    with pytest.raises(NotReady):
        batcher.submit("k", ["x"])
