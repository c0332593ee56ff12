"""Dynamic batching: concurrent requests share model calls and get exactly the unbatched answers,
also when one batch mixes adapters (one forward with per-row LoRA weights)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial.learners import LearnerConfig, build_learner
from services.inference.batching import Batcher, BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.model import CHUNK_ROWS, predict, predict_grouped
from services.inference.tensors import decode_bytes, encode_bytes
from tests.helpers import wait_for

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
    wait_for(condition, timeout, "the condition", interval=0.005)


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


def _fsa(backbone, seed: int, adapted: bool):
    """A first-session-adaptation learner on the tiny backbone, past its window or not."""
    config = LearnerConfig(learner="fsa", projection_dim=32, warmup_examples=8, warmup_min_classes=2,
                           warmup_min_count=2, warmup_epochs=1, warmup_lr=1e-2, seed=seed)  # fmt: skip
    learner = build_learner(backbone, config)
    texts = QUERIES * (2 if adapted else 1)
    labels = ["animal", "plant", "artifact", "animal", "artifact", "plant", "animal", "artifact"]
    for first in range(0, len(texts) - 4 if not adapted else len(texts), 4):
        learner.learn(texts[first : first + 4], (labels * 2)[first : first + 4])
    assert learner.adapted is adapted
    return learner


def test_first_session_versions_of_many_adapters_share_one_forward(service, tiny_backbone):
    """Adapted and not-yet-adapted FSA versions and an LAE version in one batch: every item gets
    what the library computes for its own snapshot (one frozen forward, one tail pass)."""
    learners = {
        "x": _fsa(tiny_backbone, seed=1, adapted=True),
        "y": _fsa(tiny_backbone, seed=2, adapted=True),
        "z": _fsa(tiny_backbone, seed=3, adapted=False),
        "lae": make_learner(tiny_backbone, seed=4),
    }
    for name, learner in learners.items():
        publish(service.store, learner, adapter=name)
    served = {name: service.plane.get(name) for name in learners}
    work = [(served["x"], QUERIES[:3]), (served["lae"], QUERIES[3:4]), (served["y"], QUERIES[3:6]),
            (served["z"], QUERIES[6:]), (served["x"], QUERIES[7:])]  # fmt: skip
    for (version, texts), scores in zip(work, predict(tiny_backbone, work), strict=True):
        name = version.adapter
        with torch.inference_mode():
            library = (
                learners[name].scores(texts).float()
                if name != "lae"
                else learners[name].scores(texts)
            )
        torch.testing.assert_close(scores, library, atol=1e-5, rtol=1e-4)


def test_length_sorted_chunks_of_many_fsa_rows_give_each_version_its_library_scores(
    service, tiny_backbone
):
    """More rows than one chunk, of very different lengths, over three versions: the rows are
    regrouped by length into chunks (`CHUNK_ROWS`), yet every item gets its library scores."""
    learners = {name: _fsa(tiny_backbone, seed, adapted) for name, seed, adapted in
                (("x", 1, True), ("y", 2, True), ("z", 3, False))}  # fmt: skip
    for name, learner in learners.items():
        publish(service.store, learner, adapter=name)
    served = {name: service.plane.get(name) for name in learners}
    words = "an old stone bridge over a wide and slow river in the green valley".split()
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) for i in range(24)]
    assert len(texts) > 2 * CHUNK_ROWS  # several chunks
    work = [(served["x"], texts[:11]), (served["y"], texts[11:17]), (served["z"], texts[17:])]
    for (version, rows), scores in zip(work, predict(tiny_backbone, work), strict=True):
        with torch.inference_mode():
            library = learners[version.adapter].scores(rows).float()
        torch.testing.assert_close(scores, library, atol=1e-5, rtol=1e-4)


def test_a_lone_request_skips_the_queue_delay_and_company_waits_for_it():
    """The delay is spent only when more than one request is outstanding: a lone caller's
    request reaches the model at once; once requests overlapped, the next batch waits to fill."""
    started, release = threading.Event(), threading.Event()

    def run(work):  # every job learns its batch's row count
        started.set()
        release.wait(10)
        return [sum(len(rows) for _, rows in work)] * len(work)

    batcher = Batcher(
        run,
        BatchingConfig(max_batch_size=2, max_queue_delay_seconds=60.0),
        InferenceMetrics(CollectorRegistry()),
    ).start()
    try:
        release.set()
        for _ in range(3):  # each alone: answered long before the 60 s delay
            assert batcher.result(batcher.submit("k", ["x"]), time.monotonic() + 10) == 1
        release.clear()
        started.clear()
        first = batcher.submit("k", ["x"])  # alone: straight to the model, which now blocks
        assert started.wait(10)
        second = batcher.submit("k", ["x"])  # two outstanding: company
        release.set()
        assert batcher.result(first, time.monotonic() + 10) == 1
        third = batcher.submit("k", ["x"])  # the batch `second` waits in fills with it
        assert batcher.result(second, time.monotonic() + 10) == 2
        assert batcher.result(third, time.monotonic() + 10) == 2
    finally:
        batcher.stop(timeout=5)
