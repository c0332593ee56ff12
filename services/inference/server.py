"""gRPC layer of the inference service: protobuf ↔ data plane, nothing else.

Serves `inference.GRPCInferenceService` (the Open Inference Protocol as KServe and
Triton define it; we use the stubs `tritonclient` publishes, so the wire contract
is exactly what its clients send), `grpc.health.v1` and server reflection.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial import __version__
from perennial.errors import InvalidInput, NotFound, NotReady
from perennial.serving import DataPlane
from services.inference.tensors import decode_bytes, element_count, encode_bytes, encode_fp32

log = logging.getLogger("perennial.inference")
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TEXT_INPUT = "text"
OUTPUTS = ("probabilities", "label")
_STATUS = {InvalidInput: grpc.StatusCode.INVALID_ARGUMENT, NotFound: grpc.StatusCode.NOT_FOUND,
           NotReady: grpc.StatusCode.UNAVAILABLE}


def _domain_errors(method):
    """Map domain errors to status codes; anything else is INTERNAL with details only in the log."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except (InvalidInput, NotFound, NotReady) as error:
            context.abort(_STATUS[type(error)], str(error))
        except Exception:
            log.exception("internal error", extra={"fields": {"method": method.__name__}})
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, metrics) -> None:
        self.plane: DataPlane | None = None  # set once the backbone is loaded
        self.metrics = metrics
        self.draining = False

    def _plane(self) -> DataPlane:
        if self.plane is None or self.draining:
            raise NotReady("the server is starting or draining; retry shortly")
        return self.plane

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.plane is not None and not self.draining)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="perennial", version=__version__, extensions=[])

    @_domain_errors
    def ModelReady(self, request, context):
        try:
            self._plane().get(request.name, request.version)
        except NotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @_domain_errors
    def ModelMetadata(self, request, context):
        served = self._plane().get(_model_name(request.name), request.version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=[served.version],
            platform="perennial_lae",
            inputs=[tensor(name=TEXT_INPUT, datatype="BYTES", shape=[-1])],
            outputs=[
                tensor(name="probabilities", datatype="FP32", shape=[-1, len(served.classes)]),
                tensor(name="label", datatype="BYTES", shape=[-1]),
            ],
        )

    def ModelInfer(self, request, context):
        started = time.perf_counter()
        try:
            return self._infer(request, context)
        finally:  # after abort() the context holds the status code
            code = context.code() or grpc.StatusCode.OK
            adapter = request.model_name or "-"
            self.metrics.requests.labels(adapter, code.name).inc()
            self.metrics.request_duration.labels(adapter).observe(time.perf_counter() - started)

    @_domain_errors
    def _infer(self, request, context):
        texts = _texts(request)
        wanted = [output.name for output in request.outputs] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model offers {list(OUTPUTS)}")
        prediction = self._plane().infer(_model_name(request.model_name), request.model_version, texts)
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=prediction.served.version, id=request.id
        )
        response.parameters["adapter_version"].string_param = prediction.served.version
        for name in wanted:
            if name == "probabilities":
                scores = prediction.scores.numpy()
                response.outputs.add(name=name, datatype="FP32", shape=list(scores.shape))
                response.raw_output_contents.append(encode_fp32(scores))
            else:
                labels = [label.encode() for label in prediction.labels]
                response.outputs.add(name=name, datatype="BYTES", shape=[len(labels)])
                response.raw_output_contents.append(encode_bytes(labels))
        return response


def _model_name(name: str) -> str:
    if not name:
        raise InvalidInput("model_name is empty; set it to the adapter id")
    return name


def _texts(request) -> list[str]:
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input named {TEXT_INPUT!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != TEXT_INPUT:
        raise InvalidInput(f"input is named {tensor.name!r}; name it {TEXT_INPUT!r}")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {TEXT_INPUT!r} has datatype {tensor.datatype}; send BYTES (UTF-8 text)")
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


def build_server(servicer: InferenceServicer, health_servicer: health.HealthServicer, *,
                 workers: int = 8, max_message_bytes: int = 16 * 1024 * 1024) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    return server


def set_health(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)
