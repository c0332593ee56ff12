"""Open Inference Protocol conformance through tritonclient.grpc (and raw stubs where a client
cannot express the case): every RPC, both content encodings, requested outputs, health, reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.inference.tensors import decode_fp32, encode_bytes, encode_fp32, typed_fp32

from .conftest import LABELS, TEXTS, publish


def _stub(service):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))


def test_health_and_readiness_follow_the_backbone(service):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))
    request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    assert stub.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
    client = service.client()
    assert client.is_server_live() and not client.is_server_ready()
    with pytest.raises(InferenceServerException, match="starting or draining") as caught:
        service.infer()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    service.ready()
    assert stub.Check(request).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    )
    assert client.is_server_ready()


def test_server_metadata_and_reflection(service):
    metadata = service.client().get_server_metadata()
    assert metadata.name == "perennial" and metadata.version
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(service.address))
    [reply] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_model_infer_returns_probabilities_labels_classes_and_version(service, learner):
    manifest = publish(service.store, learner)
    service.ready()
    result = service.infer()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert [label.decode() for label in result.as_numpy("label")] == learner.predict(TEXTS)
    assert [c.decode() for c in result.as_numpy("classes")] == LABELS
    response = result.get_response()
    assert response.model_version == manifest.version
    assert response.parameters["adapter_version"].string_param == manifest.version
    assert all(
        len(raw) > 0 for raw in response.raw_output_contents
    )  # outputs only in the raw field
    only_labels = service.infer(outputs=["label"])
    assert [o.name for o in only_labels.get_response().outputs] == ["label"]


def test_model_ready_and_metadata_describe_the_model(service, learner):
    manifest = publish(service.store, learner)
    service.ready()
    client = service.client()
    assert client.is_model_ready("demo") and not client.is_model_ready("nope")
    assert client.is_model_ready("demo", manifest.version) and not client.is_model_ready(
        "demo", "v9-x"
    )
    metadata = client.get_model_metadata("demo")
    assert metadata.versions == [manifest.version]
    assert metadata.platform == "perennial_lae"  # the learner that wrote this snapshot
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("text", "BYTES", [-1, 1])  # one text per row; [N] is accepted too
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 3]),
        ("label", "BYTES", [-1]),
        ("classes", "BYTES", [3]),
    ]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_texts_as_n_by_1_give_the_same_answer_as_n(service, learner):
    publish(service.store, learner)
    service.ready()
    flat = service_pb2.ModelInferRequest(model_name="demo")
    flat.inputs.add(name="text", datatype="BYTES", shape=[3])
    flat.raw_input_contents.append(encode_bytes([t.encode() for t in TEXTS]))
    column = service_pb2.ModelInferRequest()
    column.CopyFrom(flat)
    column.inputs[0].shape[:] = [3, 1]  # Triton's layout, what perf_analyzer sends
    stub = _stub(service)
    assert stub.ModelInfer(column).raw_output_contents == stub.ModelInfer(flat).raw_output_contents


def test_typed_contents_give_the_same_answer_as_raw(service, learner):
    publish(service.store, learner)
    service.ready()
    typed = service_pb2.ModelInferRequest(model_name="demo")
    tensor = typed.inputs.add(name="text", datatype="BYTES", shape=[3])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    raw = service_pb2.ModelInferRequest(model_name="demo")
    raw.inputs.add(name="text", datatype="BYTES", shape=[3])
    raw.raw_input_contents.append(encode_bytes([t.encode() for t in TEXTS]))
    stub = _stub(service)
    a, b = stub.ModelInfer(typed), stub.ModelInfer(raw)
    assert [o.name for o in a.outputs] == ["probabilities", "label", "classes"]
    assert a.raw_output_contents == b.raw_output_contents


def test_fp32_tensors_decode_in_both_encodings_and_a_text_model_says_what_it_takes(
    service, learner
):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_fp32(encode_fp32(array), [2, 3]), array)
    np.testing.assert_array_equal(typed_fp32(array.ravel().tolist(), [2, 3]), array)
    publish(service.store, learner)
    service.ready()
    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(encode_fp32(array))
    with pytest.raises(grpc.RpcError) as caught:
        _stub(service).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send BYTES" in caught.value.details()


def test_request_metrics_by_adapter_and_code(service, learner):
    publish(service.store, learner)
    service.ready()
    service.infer()
    with pytest.raises(InferenceServerException):
        service.infer(model="nope")
    assert (
        service.sample("perennial_inference_requests_total", {"adapter": "demo", "code": "OK"}) == 1
    )
    assert (
        service.sample(
            "perennial_inference_requests_total", {"adapter": "_other", "code": "NOT_FOUND"}
        )
        == 1
    )
    assert (
        service.sample(
            "perennial_inference_request_duration_seconds_count", {"adapter": "demo", "code": "OK"}
        )
        == 1
    )
    assert service.sample("perennial_inference_batch_size_rows_count") >= 1
    assert service.sample("perennial_inference_resident_adapters") == 1
    assert service.sample("perennial_inference_resident_adapter_memory_bytes") > 0
    version = service.plane.current_version("demo")
    assert (
        service.sample(
            "perennial_inference_adapter_version_info", {"adapter": "demo", "version": version}
        )
        == 1
    )


def test_answered_requests_feed_the_drift_monitor(service, learner, tiny_backbone):
    from services.inference.metrics import InferenceDriftMetrics
    from services.inference.monitor import InferenceDriftMonitor, frozen_token_embedder

    publish(service.store, learner)
    service.ready()
    service.servicer.monitor = InferenceDriftMonitor(
        InferenceDriftMetrics(service.registry), frozen_token_embedder(tiny_backbone)
    )
    service.infer()
    assert service.servicer.monitor.drain(timeout=10)
    assert service.sample(
        "perennial_inference_drift_observations_total", {"adapter": "demo"}
    ) == len(TEXTS)
