"""Graceful drain (what SIGTERM does): NOT_SERVING, new requests refused, in-flight ones finish."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.inference.tensors import encode_bytes
from tests.helpers import wait_for

from .conftest import publish


def _request():
    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes([b"a dog"]))
    return request


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(service, learner):
    publish(service.store, learner)
    service.ready()
    gate = service.gate_model()
    channel = grpc.insecure_channel(service.address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    in_flight = [stub.ModelInfer.future(_request()) for _ in range(3)]
    wait_for(
        lambda: service.sample("perennial_inference_queue_duration_seconds_count") >= 1,
        10,
        "a request to reach the model",
        interval=0.005,
    )
    drained = threading.Thread(
        target=service.servicer.drain, args=(service.server, service.health, 10.0)
    )
    drained.start()
    wait_for(lambda: service.servicer.draining, 10, "the drain to start", interval=0.005)
    assert not service.servicer.ready
    status = service.health._server_status  # the health servicer's own state (the port is closing)
    assert status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
    gate.set()
    assert all(call.result(timeout=10).model_version for call in in_flight)
    drained.join(timeout=15)
    assert not drained.is_alive()
    try:
        stub.ModelInfer(_request(), timeout=2)
        raise AssertionError("a request after the drain was answered")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
