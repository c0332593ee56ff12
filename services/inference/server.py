"""gRPC layer of the inference service: protobuf ↔ `InferenceOperations`, nothing else.

Serves `inference.GRPCInferenceService` (the Open Inference Protocol as KServe and
Triton define it, with the model repository, configuration and statistics extensions;
we use the stubs `tritonclient` publishes, so the wire contract is exactly what its
clients send), `grpc.health.v1` and server reflection. The REST transport (`rest.py`)
calls the same operations. Handlers raise domain errors; `DomainErrorInterceptor`
turns them into status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from perennial import grpc_errors
from perennial.errors import InvalidInput
from perennial.grpc_errors import DomainErrorInterceptor
from perennial.grpc_security import ServerSecurity
from services.inference.batching import BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.operations import (
    InferenceOperations,
    InferRequest,
    InferResult,
    InputTensor,
)
from services.inference.plane import ServerConfig
from services.inference.tensors import encode_bytes, encode_fp32

log = logging.getLogger(__name__)
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
NO_DEADLINE_SECONDS = 365 * 24 * 3600.0


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol over gRPC: protobuf ↔ `InferenceOperations` (shared with REST).

    `plane`, `batcher`, `monitor`, `draining`, `ready` and `attach` are the operations' own."""

    def __init__(
        self,
        metrics: InferenceMetrics,
        batching: BatchingConfig = BatchingConfig(),
        monitor=None,
        operations: InferenceOperations | None = None,
    ) -> None:
        self.operations = operations or InferenceOperations(metrics, batching, monitor)

    def attach(self, plane) -> None:
        self.operations.attach(plane)

    plane = property(lambda self: self.operations.plane)
    ready = property(lambda self: self.operations.ready)
    draining = property(lambda self: self.operations.draining)
    batcher = property(
        lambda self: self.operations.batcher,
        lambda self, value: setattr(self.operations, "batcher", value),
    )
    monitor = property(
        lambda self: self.operations.monitor,
        lambda self, value: setattr(self.operations, "monitor", value),
    )

    # -- the protocol: each method converts, calls its operation, converts back ------------------
    def ServerLive(self, request, context):
        return _message(self.operations.server_live(), service_pb2.ServerLiveResponse())

    def ServerReady(self, request, context):
        return _message(self.operations.server_ready(), service_pb2.ServerReadyResponse())

    def ServerMetadata(self, request, context):
        return _message(self.operations.server_metadata(), service_pb2.ServerMetadataResponse())

    def ModelReady(self, request, context):
        answer = self.operations.model_ready(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=answer["ready"])

    def ModelMetadata(self, request, context):
        answer = self.operations.model_metadata(request.name, request.version)
        return _message(answer, service_pb2.ModelMetadataResponse())

    def ModelConfig(self, request, context):
        config = self.operations.model_config(request.name, request.version)
        return service_pb2.ModelConfigResponse(
            config=_message(config, model_config_pb2.ModelConfig())
        )

    def RepositoryIndex(self, request, context):
        index = self.operations.repository_index(ready_only=request.ready)
        return _message(index, service_pb2.RepositoryIndexResponse())

    def ModelStatistics(self, request, context):
        stats = self.operations.model_statistics(request.name, request.version)
        return _message(stats, service_pb2.ModelStatisticsResponse())

    def ModelInfer(self, request, context):
        remaining = context.time_remaining()
        no_deadline = remaining is None or remaining > NO_DEADLINE_SECONDS  # gRPC says ~infinity
        deadline = None if no_deadline else time.monotonic() + remaining
        result = self.operations.infer(_infer_request(request), deadline, context.add_callback)
        return _response(result)

    def drain(
        self,
        server: grpc.Server,
        health_servicer: health.HealthServicer,
        grace: float,
        others: Sequence[Callable[[float], object]] = (),
    ) -> None:
        """SIGTERM: NOT_SERVING, refuse new requests, let in-flight ones finish, stop.
        `others` stop the other transports (e.g. REST) within the same grace period."""
        self.operations.draining = True
        set_health(health_servicer, False)
        with futures.ThreadPoolExecutor(max(1, len(others))) as pool:
            for stop in others:
                pool.submit(stop, grace)
            server.stop(grace=grace).wait()
        self.operations.stop(timeout=grace)


def _message(answer: dict, message):
    """The protocol's JSON object as its protobuf message (the field names are the same)."""
    return json_format.ParseDict(answer, message)


def _infer_request(request) -> InferRequest:
    raw = request.raw_input_contents
    # (with another number of inputs than one, the operation says how many it takes)
    if raw and len(raw) != len(request.inputs) and len(request.inputs) == 1:
        raise InvalidInput(
            f"{len(request.raw_input_contents)} raw_input_contents for "
            f"{len(request.inputs)} inputs; send one per input"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        raw_tensor = raw[index] if index < len(raw) else None
        typed = (
            tensor.contents.bytes_contents
            if tensor.datatype == "BYTES"
            else tensor.contents.fp32_contents
        )
        inputs.append(
            InputTensor(tensor.name, tensor.datatype, list(tensor.shape), raw_tensor, typed)
        )
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    return InferRequest(
        request.model_name,
        inputs,
        request.model_version,
        request.id,
        [output.name for output in request.outputs],
        parameters,
    )


def _parameter(value) -> object:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _response(result: InferResult):
    response = service_pb2.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    for key, value in result.parameters.items():
        _set_parameter(response.parameters[key], value)
    for output in result.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(
            encode_fp32(output.data) if output.datatype == "FP32" else encode_bytes(output.data)
        )
    return response


def _set_parameter(parameter, value) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = str(value)


def build_server(
    servicer: InferenceServicer,
    health_servicer: health.HealthServicer,
    config: ServerConfig = ServerConfig(),
    security: ServerSecurity = ServerSecurity(),
    tracing: Sequence[grpc.ServerInterceptor] = (),
) -> grpc.Server:
    """A gRPC server with the inference, health and reflection services; add a port with
    `security.add_port(server, address)`. `tracing`: the span interceptor, outermost."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
        interceptors=[*tracing, *security.interceptors(), DomainErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port another process holds is an error, not shared
        ],
        maximum_concurrent_rpcs=config.workers,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server


def set_health(health_servicer: health.HealthServicer, serving: bool) -> None:
    grpc_errors.set_health(health_servicer, SERVICE_NAME, serving)
