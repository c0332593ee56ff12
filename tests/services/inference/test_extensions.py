"""The protocol's extensions on both transports: the model repository index, the model
configuration and per-version statistics, as tritonclient (grpc and http) reads them; the
RPCs we do not offer answer UNIMPLEMENTED without logging a traceback."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.inference.batching import BatchingConfig
from services.inference.plane import ServingConfig

from .conftest import TEXTS, make_learner, publish


@pytest.fixture
def two_adapters(start_service, tiny_backbone):
    service = start_service(
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_seconds=0.004),
        serving=ServingConfig(max_rows=16),
    )
    first = publish(service.store, make_learner(tiny_backbone, seed=0), adapter="first")
    second = publish(service.store, make_learner(tiny_backbone, seed=1), adapter="second")
    return service.ready(), first, second


def _grpc_json(message) -> dict:
    """A gRPC answer as the REST JSON (integers as numbers, field names as in the .proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_repository_index_lists_every_adapter_with_its_head_and_state(two_adapters):
    service, first, second = two_adapters
    service.infer(model="first")  # resident now; "second" loads on its first request
    expected = [
        {"name": "first", "version": first.version, "state": "READY"},
        {"name": "second", "version": second.version, "state": "READY",
         "reason": "not resident: loads on its first request"},
    ]  # fmt: skip
    over_grpc = _grpc_json(service.client().get_model_repository_index())["models"]
    assert over_grpc == expected
    over_http = service.http_client().get_model_repository_index()
    assert [{k: v for k, v in m.items() if v} for m in over_http] == expected
    assert [m["name"] for m in service.http_client().get_model_repository_index()] == [
        "first",
        "second",
    ]


def test_model_config_describes_tensors_max_batch_size_and_dynamic_batching(two_adapters):
    service, first, _ = two_adapters
    config = service.client().get_model_config("first").config
    assert config.max_batch_size == 16 and config.platform == "perennial_lae"
    assert config.dynamic_batching.max_queue_delay_microseconds == 4000
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("text", 13, [1])  # TYPE_STRING, one text per row
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("probabilities", [3]),
        ("label", []),
        ("classes", [3]),
    ]
    assert config.parameters["adapter_version"].string_value == first.version
    over_http = service.http_client().get_model_config("first")
    assert over_http["dynamic_batching"] == {
        "max_queue_delay_microseconds": 4000,  # a number over HTTP, as Triton answers
        "default_queue_policy": {"max_queue_size": 256, "allow_timeout_override": True},
    }
    assert over_http["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "label", "data_type": "TYPE_STRING", "dims": []},
        {"name": "classes", "data_type": "TYPE_STRING", "dims": [3]},
    ]
    assert over_http["max_batch_size"] == 16 and over_http["input"][0]["data_type"] == "TYPE_STRING"
    with pytest.raises(InferenceServerException) as caught:
        service.client().get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        service.http_client().get_model_config("nope")
    assert caught.value.status() == "404"


def test_statistics_per_adapter_and_version_as_triton_reports_them(two_adapters):
    service, first, second = two_adapters
    for _ in range(3):
        service.infer(model="first")  # 3 requests of 3 rows
    service.http_client().infer("second", [_http_input(["a dog"])])
    with pytest.raises(InferenceServerException):
        service.infer(model="first", texts=["  "])  # invalid: before any version, not counted
    stats = service.http_client().get_inference_statistics()["model_stats"]
    by_name = {s["name"]: s for s in stats}
    assert set(by_name) == {"first", "second"}
    one = by_name["first"]
    assert one["version"] == str(first.sequence)  # an integer, as Triton names versions
    assert one["inference_count"] == 9 and 1 <= one["execution_count"] <= 3
    inference = one["inference_stats"]
    assert inference["success"]["count"] == 3 and inference["fail"]["count"] == 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        # per request, like Triton (perf_analyzer requires equal compute counts)
        assert inference[phase]["count"] == 3 and inference[phase]["ns"] > 0, phase
    assert inference["success"]["ns"] >= inference["queue"]["ns"]
    assert isinstance(inference["success"]["ns"], int)  # numbers, not strings (perf_analyzer)
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in one["batch_stats"]) == 9
    assert one["last_inference"] > 0
    assert by_name["second"]["inference_count"] == 1
    over_grpc = service.client().get_inference_statistics("first", first.version)
    [grpc_stats] = over_grpc.model_stats
    assert (grpc_stats.name, grpc_stats.version) == ("first", str(first.sequence))
    by_sequence = service.client().get_inference_statistics("first", str(first.sequence))
    assert by_sequence.model_stats[0].inference_count == 9
    assert grpc_stats.inference_stats.success.count == 3 and grpc_stats.inference_count == 9
    only_second = service.http_client().get_inference_statistics("second")["model_stats"]
    assert [s["name"] for s in only_second] == ["second"]
    with pytest.raises(InferenceServerException) as caught:
        service.client().get_inference_statistics("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_a_failed_request_on_a_known_version_counts_as_fail(two_adapters):
    service, first, _ = two_adapters
    service.infer(model="first")
    gate = service.gate_model()
    with pytest.raises(InferenceServerException) as caught:
        service.infer(model="first", client_timeout=0.3)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    gate.set()
    stats = service.http_client().get_inference_statistics("first")["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 1


def test_rpcs_we_do_not_offer_are_unimplemented_without_a_traceback(service, caplog):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    with caplog.at_level(logging.ERROR):
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="demo"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def _http_input(texts):
    import numpy as np
    import tritonclient.http as triton_http

    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


assert TEXTS  # the default request: three texts
