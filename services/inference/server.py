"""gRPC layer of the inference service: protobuf ↔ data plane, nothing else.

Serves `inference.GRPCInferenceService` (the Open Inference Protocol as KServe and
Triton define it; we use the stubs `tritonclient` publishes, so the wire contract
is exactly what its clients send), `grpc.health.v1` and server reflection.
Handlers raise domain errors; `DomainErrorInterceptor` turns them into status codes.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial import __version__, grpc_errors
from perennial.errors import InvalidInput, NotFound, NotReady
from perennial.grpc_errors import DomainErrorInterceptor, status_of
from perennial.grpc_security import ServerSecurity
from perennial.monitoring import NoMonitor
from services.inference.batching import Batcher, BatchingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.model import Prediction, predict
from services.inference.plane import DataPlane
from services.inference.tensors import (
    decode_bytes,
    decode_fp32,
    element_count,
    encode_bytes,
    encode_fp32,
    typed_fp32,
)

log = logging.getLogger(__name__)
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TEXT_INPUT = "text"
IMAGE_INPUT = "image"
OUTPUTS = ("probabilities", "label", "classes")
NO_DEADLINE_SECONDS = 365 * 24 * 3600.0
OTHER_ADAPTER = (
    "_other"  # metric label of requests for adapters that are not resident (bounded labels)
)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol handlers; NOT ready until `attach` gives it a data plane."""

    def __init__(
        self, metrics: InferenceMetrics, batching: BatchingConfig = BatchingConfig(), monitor=None
    ) -> None:
        self.metrics = metrics
        self.batching = batching
        self.monitor = monitor or NoMonitor()  # drift: `submit` only queues, off the request path
        self.plane: DataPlane | None = None
        self.batcher: Batcher | None = None
        self.draining = False

    def attach(self, plane: DataPlane) -> None:
        """Start batching on `plane`; from now on the server is ready."""
        self.batcher = Batcher(
            functools.partial(predict, plane.backbone), self.batching, self.metrics
        ).start()
        self.plane = plane

    @property
    def ready(self) -> bool:
        return self.plane is not None and not self.draining

    def _plane(self) -> DataPlane:
        if self.plane is None or self.draining:
            raise NotReady("the server is starting or draining; retry shortly")
        return self.plane

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.ready)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name="perennial", version=__version__, extensions=[]
        )

    def ModelReady(self, request, context):
        try:
            self._plane().get(_model_name(request.name), request.version)
        except NotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context):
        served = self._plane().get(_model_name(request.name), request.version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=[served.version],
            platform=f"perennial_{served.learner}",
            inputs=[
                tensor(name=name, datatype=datatype, shape=shape)
                for name, datatype, shape in [input_spec(self._plane().backbone)]
            ],
            outputs=[
                tensor(name="probabilities", datatype="FP32", shape=[-1, len(served.classes)]),
                tensor(name="label", datatype="BYTES", shape=[-1]),
                tensor(name="classes", datatype="BYTES", shape=[len(served.classes)]),
            ],
        )

    def ModelInfer(self, request, context):
        started, error = time.perf_counter(), None
        try:
            return self._infer(request, context)
        except Exception as raised:
            error = raised
            raise
        finally:
            resident = (
                self.plane is not None
                and self.plane.current_version(request.model_name) is not None
            )
            adapter = request.model_name if resident else OTHER_ADAPTER
            code = status_of(error).name
            self.metrics.requests.labels(adapter, code).inc()
            self.metrics.request_duration.labels(adapter, code).observe(
                time.perf_counter() - started
            )

    def _infer(self, request, context):
        plane = self._plane()
        texts = _inputs(request, input_spec(plane.backbone))
        wanted = [output.name for output in request.outputs] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model offers {list(OUTPUTS)}")
        plane.validate(texts)
        served = plane.get(_model_name(request.model_name), request.model_version)
        remaining = context.time_remaining()
        no_deadline = remaining is None or remaining > NO_DEADLINE_SECONDS  # gRPC says ~infinity
        deadline = None if no_deadline else time.monotonic() + remaining
        job = self.batcher.submit(served, texts, deadline)
        context.add_callback(lambda: setattr(job, "cancelled", True))  # caller gone: skip the work
        prediction = Prediction(served, self.batcher.result(job, deadline))
        if isinstance(texts[0], str):  # the drift monitor embeds texts
            self.monitor.submit(served.adapter, texts, prediction.labels)
        return _response(request, prediction, wanted)

    def drain(
        self, server: grpc.Server, health_servicer: health.HealthServicer, grace: float
    ) -> None:
        """SIGTERM: NOT_SERVING, refuse new requests, let in-flight ones finish, stop."""
        self.draining = True
        set_health(health_servicer, False)
        server.stop(grace=grace).wait()
        if self.batcher is not None:
            self.batcher.stop(timeout=grace)


def _response(request, prediction: Prediction, wanted: list[str]):
    version = prediction.served.version
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=version, id=request.id
    )
    response.parameters["adapter_version"].string_param = version
    for name in wanted:
        if name == "probabilities":
            scores = prediction.scores.numpy()
            response.outputs.add(name=name, datatype="FP32", shape=list(scores.shape))
            response.raw_output_contents.append(encode_fp32(scores))
        else:
            items = prediction.labels if name == "label" else prediction.served.classes
            response.outputs.add(name=name, datatype="BYTES", shape=[len(items)])
            response.raw_output_contents.append(encode_bytes([item.encode() for item in items]))
    return response


def _model_name(name: str) -> str:
    if not name:
        raise InvalidInput("model_name is empty; set it to the adapter id")
    return name


def input_spec(backbone) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of the model input: BYTES text, or FP32 images [N, (C,) H, W]."""
    if hasattr(backbone, "tokenize"):
        return TEXT_INPUT, "BYTES", [-1]
    return IMAGE_INPUT, "FP32", [-1, -1, -1, -1]


def _inputs(request, spec: tuple[str, str, list[int]]) -> list:
    """The request's rows: strings for a text model, [(C,) H, W] float tensors for an image model."""
    name, datatype, _ = spec
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input named {name!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != name:
        raise InvalidInput(f"input is named {tensor.name!r}; name it {name!r}")
    if tensor.datatype != datatype:
        kind = "text: send BYTES (UTF-8)" if datatype == "BYTES" else "images: send FP32"
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype}; this model takes {kind}"
        )
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput(
            f"{len(request.raw_input_contents)} raw_input_contents for "
            f"{len(request.inputs)} inputs; send one per input"
        )
    return _texts(request, tensor) if datatype == "BYTES" else _images(request, tensor)


def _images(request, tensor) -> list[torch.Tensor]:
    shape = list(tensor.shape)
    if len(shape) not in (3, 4):
        raise InvalidInput(
            f"input {IMAGE_INPUT!r} has shape {shape}; send [N, H, W] or [N, C, H, W]"
        )
    if request.raw_input_contents:
        array = decode_fp32(request.raw_input_contents[0], shape)
    else:
        array = typed_fp32(tensor.contents.fp32_contents, shape)
    if not np.isfinite(array).all():
        raise InvalidInput(f"input {IMAGE_INPUT!r} holds NaN or infinite values")
    return list(torch.from_numpy(array.copy()))


def _texts(request, tensor) -> list[str]:
    if len(tensor.shape) != 1:
        raise InvalidInput(
            f"input {TEXT_INPUT!r} has shape {list(tensor.shape)}; send a 1-D shape [N]"
        )
    count = element_count(tensor.shape)
    if request.raw_input_contents:
        items = decode_bytes(request.raw_input_contents[0], count)
    else:
        items = list(tensor.contents.bytes_contents)
        if len(items) != count:
            raise InvalidInput(f"input holds {len(items)} strings but its shape says {count}")
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as error:
        raise InvalidInput(f"input {TEXT_INPUT!r} is not valid UTF-8: {error}") from error


@dataclass(frozen=True)
class ServerConfig:
    """workers: gRPC request threads (also the limit of concurrent RPCs; beyond it RESOURCE_EXHAUSTED).
    max_message_bytes: largest request or reply."""

    workers: int = 128
    max_message_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")


def build_server(
    servicer: InferenceServicer,
    health_servicer: health.HealthServicer,
    config: ServerConfig = ServerConfig(),
    security: ServerSecurity = ServerSecurity(),
) -> grpc.Server:
    """A gRPC server with the inference, health and reflection services; add a port with
    `security.add_port(server, address)`."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
        interceptors=[*security.interceptors(), DomainErrorInterceptor()],
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
