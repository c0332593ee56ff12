"""Each limit and malformed request gets its status code and a message saying what to fix;
a real bug is INTERNAL with a generic reply (details only in the log)."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial.grpc_errors import INTERNAL_MESSAGE
from services.inference.batching import BatchingConfig
from services.inference.plane import ServerConfig, ServingConfig
from services.inference.tensors import encode_bytes
from tests.helpers import wait_for

from .conftest import publish


def _request(texts=(b"a dog", b"a tree")):
    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(encode_bytes(list(texts)))
    return request


def _call(service, request, **kwargs):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, **kwargs)
    return caught.value


def _texts(request, texts):
    request.inputs[0].shape[0] = len(texts)
    request.raw_input_contents[0] = encode_bytes(texts)


CASES = [
    (
        "empty model name",
        lambda r: setattr(r, "model_name", ""),
        "INVALID_ARGUMENT",
        "model_name is empty",
    ),
    ("unknown adapter", lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "no snapshot"),
    (
        "unknown version",
        lambda r: setattr(r, "model_version", "v000042-abc"),
        "NOT_FOUND",
        "no version",
    ),
    (
        "wrong datatype",
        lambda r: setattr(r.inputs[0], "datatype", "INT64"),
        "INVALID_ARGUMENT",
        "send BYTES",
    ),
    (
        "wrong input name",
        lambda r: setattr(r.inputs[0], "name", "x"),
        "INVALID_ARGUMENT",
        "name it 'text'",
    ),
    (
        "two inputs",
        lambda r: r.inputs.add(name="text", datatype="BYTES", shape=[1]),
        "INVALID_ARGUMENT",
        "exactly one input",
    ),
    (
        "shape mismatch",
        lambda r: r.inputs[0].shape.__setitem__(0, 5),
        "INVALID_ARGUMENT",
        "shape says 5",
    ),
    ("2-D shape", lambda r: r.inputs[0].shape.append(2), "INVALID_ARGUMENT", "[N] or [N, 1]"),
    (
        "negative dim",
        lambda r: r.inputs[0].shape.__setitem__(0, -1),
        "INVALID_ARGUMENT",
        "negative",
    ),
    (
        "truncated raw",
        lambda r: r.raw_input_contents.__setitem__(0, b"\x09\x00"),
        "INVALID_ARGUMENT",
        "truncated",
    ),
    ("no rows", lambda r: _texts(r, []), "INVALID_ARGUMENT", "is empty"),
    (
        "blank text",
        lambda r: _texts(r, [b"a dog", b"  "]),
        "INVALID_ARGUMENT",
        "element 1 is empty",
    ),
    ("not utf-8", lambda r: _texts(r, [b"\xff\xfe"]), "INVALID_ARGUMENT", "not valid UTF-8"),
    ("text too long", lambda r: _texts(r, [b"x" * 101]), "INVALID_ARGUMENT", "limit is 100"),
    ("too many rows", lambda r: _texts(r, [b"a"] * 9), "INVALID_ARGUMENT", "limit is 8"),
    (
        "unknown output",
        lambda r: r.outputs.add(name="logits"),
        "INVALID_ARGUMENT",
        "unknown output",
    ),
]


@pytest.fixture
def limited(start_service, learner):
    service = start_service(
        batching=BatchingConfig(max_batch_size=8),
        serving=ServingConfig(max_text_chars=100, max_rows=8),
        server_config=ServerConfig(workers=8, max_message_bytes=64 * 1024),
    )
    publish(service.store, learner)
    return service.ready()


@pytest.mark.parametrize(
    ("mutate", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_requests_get_a_status_that_says_what_to_fix(limited, mutate, code, message):
    request = _request()
    mutate(request)
    error = _call(limited, request)
    assert (error.code().name, message in error.details()) == (code, True), error.details()


def test_a_message_over_the_size_limit_is_resource_exhausted(limited):
    error = _call(limited, _request([b"x" * 70_000]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_full_queue_is_resource_exhausted_and_deadlines_are_honoured(start_service, learner):
    service = start_service(
        batching=BatchingConfig(max_batch_size=2, max_queue_size=2, max_queue_delay_seconds=0.0)
    )
    publish(service.store, learner)
    service.ready()
    gate = service.gate_model()
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    first = stub.ModelInfer.future(_request([b"a dog"]))
    batcher = service.servicer.batcher
    _wait(
        lambda: (
            batcher._rows == 0
            and service.sample("perennial_inference_queue_duration_seconds_count") == 1
        )
    )
    # the first request is held in the model; fill the queue with two more
    held = [stub.ModelInfer.future(_request([b"a dog"])) for _ in range(2)]
    _wait(lambda: batcher._rows == 2)
    error = _call(service, _request([b"a dog"]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in error.details()
    gate.set()
    assert all(f.result().model_version for f in [first, *held])

    gate = service.gate_model()
    blocker = stub.ModelInfer.future(_request([b"a dog"]))
    _wait(
        lambda: (
            service.servicer.batcher._rows == 0
            and service.sample("perennial_inference_queue_duration_seconds_count") == 4
        )
    )
    late = stub.ModelInfer.future(_request([b"a tree"]), timeout=0.2)
    assert late.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.set()
    assert blocker.result().model_version
    _wait(lambda: service.sample("perennial_inference_batch_size_rows_count") == 3)
    # the expired request never reached the model: 3 batches (1, 2, 1 rows) — not 4
    assert service.sample("perennial_inference_batch_size_rows_sum") == 4


def test_a_bug_is_internal_with_a_generic_message(service, learner):
    publish(service.store, learner)
    service.ready()
    service.plane.validate = None  # a programming error inside the handler
    error = _call(service, _request())
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == INTERNAL_MESSAGE


def _wait(condition, timeout: float = 10.0) -> None:
    wait_for(condition, timeout, "the condition", interval=0.005)
