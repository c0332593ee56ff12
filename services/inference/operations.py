"""The Open Inference Protocol's operations, one function each, shared by both transports.

The gRPC servicer (`server.py`) and the REST handlers (`rest.py`) only translate their wire
format into these calls and back, so both get the same validation, limits, batcher, metrics,
statistics and domain errors (`perennial.errors`; each transport maps them to its status codes
in one table, `perennial.grpc_errors`). Answers other than inference are the protocol's JSON
objects — KServe v2 and Triton give the REST bodies and the gRPC messages the same field
names — so REST sends them as they are and gRPC parses them into its protobuf messages.
Inference keeps tensors as numpy arrays and bytes until a transport encodes them.

Extensions: model repository index, model configuration and statistics (Triton's), besides
the core protocol (health, server and model metadata, model readiness, inference).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from opentelemetry import trace

from perennial import __version__
from perennial.codec import InputSpec
from perennial.errors import InvalidInput, NotFound, NotReady
from perennial.grpc_errors import status_of
from perennial.monitoring import NoMonitor
from services.inference.batching import Batcher, BatchingConfig, Job
from services.inference.metrics import InferenceMetrics
from services.inference.model import Prediction, predict
from services.inference.plane import DataPlane
from services.inference.predictionlog import NoPredictionLog
from services.inference.statistics import InferenceStatistics, RequestTimes, triton_version
from services.inference.tensors import decode_bytes, decode_fp32, element_count, typed_fp32

log = logging.getLogger(__name__)
SERVER_NAME = "perennial"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "binary_tensor_data"]
TEXT_INPUT = "text"
IMAGE_INPUT = "image"
OUTPUTS = ("probabilities", "label", "classes")
OTHER_ADAPTER = (
    "_other"  # metric label of requests for adapters that are not resident (bounded labels)
)


# -- the transport-neutral request and result ------------------------------------------------------
@dataclass(frozen=True)
class InputTensor:
    """One input tensor as a transport received it: raw (binary) bytes, or typed values
    (flattened, row-major: bytes for BYTES, numbers for FP32)."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None
    data: Sequence | None = None


@dataclass(frozen=True)
class InferRequest:
    """An inference request: `outputs` names the outputs wanted (empty: all of them);
    `parameters` are the request's parameters (`timeout` in microseconds is honoured)."""

    model_name: str
    inputs: list[InputTensor]
    model_version: str = ""
    id: str = ""
    outputs: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    """One output: FP32 as a float32 array, BYTES as a list of bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True)
class InferResult:
    """An inference answer. Both transports copy `parameters` into the response's parameters:
    `adapter_version`, and `prediction_id` when the prediction log is on."""

    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, str | int | bool] = field(default_factory=dict)


# -- the operations ----------------------------------------------------------------------------------
class InferenceOperations:
    """The operations both transports call; NOT ready until `attach` gives it a data plane."""

    def __init__(
        self, metrics: InferenceMetrics, batching: BatchingConfig = BatchingConfig(), monitor=None
    ) -> None:
        self.metrics = metrics
        self.batching = batching
        self.monitor = monitor or NoMonitor()  # drift: `submit` only queues, off the request path
        self.prediction_log = NoPredictionLog()  # `record` only queues, off the request path
        self.statistics = InferenceStatistics()
        self.plane: DataPlane | None = None
        self.batcher: Batcher | None = None
        self.draining = False

    def attach(self, plane: DataPlane) -> None:
        """Start batching on `plane`; from now on the server is ready."""
        self.batcher = Batcher(
            functools.partial(predict, plane.backbone),
            self.batching,
            self.metrics,
            on_executed=self._executed,
        ).start()
        self.plane = plane

    @property
    def ready(self) -> bool:
        return self.plane is not None and not self.draining

    def _plane(self) -> DataPlane:
        if self.plane is None or self.draining:
            raise NotReady("the server is starting or draining; retry shortly")
        return self.plane

    # -- health and metadata ---------------------------------------------------------------------
    def server_live(self) -> dict:
        return {"live": True}

    def server_ready(self) -> dict:
        return {"ready": self.ready}

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> dict:
        """`ready` False for an adapter or version without a snapshot; NotReady while starting."""
        try:
            self._plane().get(model_name(name), version)
        except NotFound:
            return {"name": name, "ready": False}
        return {"name": name, "ready": True}

    def model_metadata(self, name: str, version: str = "") -> dict:
        plane = self._plane()
        served = plane.get(model_name(name), version)
        input_name, datatype, shape = input_spec(plane.config.inputs)
        classes = len(served.classes)
        return {
            "name": name,
            "versions": [served.version],
            "platform": f"perennial_{served.learner}",
            "inputs": [{"name": input_name, "datatype": datatype, "shape": shape}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "classes", "datatype": "BYTES", "shape": [classes]},
            ],
        }

    # -- extensions: model configuration, repository index, statistics ---------------------------
    def model_config(self, name: str, version: str = "") -> dict:
        """Triton's ModelConfig as JSON: inputs and outputs per row (`dims` without the batch
        dimension), the most rows per request (`max_batch_size`) and the dynamic batcher."""
        plane = self._plane()
        served = plane.get(model_name(name), version)
        input_name, datatype, shape = input_spec(plane.config.inputs)
        classes = len(served.classes)
        return {
            "name": name,
            "platform": f"perennial_{served.learner}",
            "backend": "perennial",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": plane.config.max_rows,
            "input": [{"name": input_name, "data_type": _config_type(datatype), "dims": shape[1:]}],
            "output": [
                {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes]},
                {"name": "label", "data_type": "TYPE_STRING", "dims": []},
                # not per row: the class names once, in the order of the probabilities
                {"name": "classes", "data_type": "TYPE_STRING", "dims": [classes]},
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": round(self.batching.max_queue_delay_seconds * 1e6),
                "default_queue_policy": {
                    "max_queue_size": self.batching.max_queue_size,
                    "allow_timeout_override": True,
                },
            },
            "parameters": {
                "adapter_version": {"string_value": served.version},
                "classes_batched": {"string_value": "false"},
            },
        }

    def repository_index(self, ready_only: bool = False) -> dict:
        """Every adapter with a snapshot: its head version and state. All are READY (an adapter
        that is not resident loads on its first request); `reason` says which are resident."""
        plane = self._plane()
        resident = set(plane.resident())
        models = []
        for adapter in plane.store.adapters():
            head = plane.store.head(adapter)
            if head is None:
                continue
            loaded = (adapter, head.version) in resident
            models.append(
                {
                    "name": adapter,
                    "version": head.version,
                    "state": "READY",
                    "reason": "" if loaded else "not resident: loads on its first request",
                }
            )
        return {"models": models}

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        """Statistics of resident versions: all, one adapter's, or one version's (named by its
        id or, as the statistics name it, by its sequence number)."""
        plane = self._plane()
        if name and version.isdigit():
            wanted = [
                key
                for key in plane.resident()
                if key[0] == name and triton_version(key[1]) == str(int(version))
            ]
            if not wanted:
                raise NotFound(f"adapter {name!r} has no resident version with sequence {version}")
        elif name:
            served = plane.get(model_name(name), version)
            wanted = (
                [(name, served.version)]
                if version
                else [key for key in plane.resident() if key[0] == name] or [(name, served.version)]
            )
        else:
            wanted = sorted(plane.resident())
        return self.statistics.report(wanted)

    # -- inference ---------------------------------------------------------------------------------
    def infer(
        self,
        request: InferRequest,
        deadline: float | None = None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
    ) -> InferResult:
        """Validate, batch, run, answer. `deadline`: a `time.monotonic()` value from the
        transport (None: none); `on_cancel(callback)` registers what to run if the caller goes away."""
        started, error, job = time.perf_counter(), None, None
        served = None
        times: dict[str, float] = {}
        try:
            plane = self._plane()
            rows = request_rows(request.inputs, plane.config.inputs)
            wanted = list(request.outputs) or list(OUTPUTS)
            unknown = sorted(set(wanted) - set(OUTPUTS))
            if unknown:
                raise InvalidInput(
                    f"unknown output(s) {unknown}; this model offers {list(OUTPUTS)}"
                )
            plane.validate(rows)
            served = plane.get(model_name(request.model_name), request.model_version)
            span = trace.get_current_span()  # the gRPC server span, when tracing is on
            span.set_attribute("perennial.adapter", served.adapter)
            span.set_attribute("perennial.version", served.version)
            deadline = _deadline(deadline, request.parameters)
            times["compute_input"] = time.perf_counter() - started
            job = self.batcher.submit(served, rows, deadline)
            if on_cancel is not None:
                on_cancel(lambda: setattr(job, "cancelled", True))  # caller gone: skip the work
            prediction = Prediction(served, self.batcher.result(job, deadline))
            returned = time.perf_counter()
            self.monitor.submit(served.adapter, rows, prediction.labels)
            ids = self.prediction_log.record(
                served.adapter,
                served.version,
                rows,
                prediction.labels,
                prediction.scores.numpy(),
                served.classes,
            )
            result = _result(request, prediction, wanted, ids)
            times["compute_output"] = time.perf_counter() - returned
            return result
        except Exception as raised:
            error = raised
            raise
        finally:
            elapsed = time.perf_counter() - started
            self._count(request.model_name, error, elapsed)
            if served is not None:
                if job is not None and job.started is not None:
                    times["queue"] = job.started - job.enqueued
                    times["compute_infer"] = job.model_seconds or 0.0
                self.statistics.record_request(
                    served.adapter, served.version, error is None, RequestTimes(elapsed, **times)
                )

    def _count(self, name: str, error: BaseException | None, seconds: float) -> None:
        resident = self.plane is not None and self.plane.current_version(name) is not None
        adapter = name if resident else OTHER_ADAPTER
        code = status_of(error).name
        self.metrics.requests.labels(adapter, code).inc()
        self.metrics.request_duration.labels(adapter, code).observe(seconds)

    def _executed(self, jobs: list[Job], seconds: float) -> None:
        rows: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.key.adapter, job.key.version)
            rows[key] = rows.get(key, 0) + len(job.rows)
        self.statistics.record_execution(rows, seconds)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests; let the batcher finish the queued ones."""
        self.draining = True
        if self.batcher is not None:
            self.batcher.stop(timeout=timeout)


def _result(
    request: InferRequest, prediction: Prediction, wanted: list[str], ids: list[str]
) -> InferResult:
    """The answer; `ids` (the rows' prediction ids, when the prediction log is on) go into the
    parameter `prediction_id`, comma-separated in row order."""
    version = prediction.served.version
    outputs = []
    for name in wanted:
        if name == "probabilities":
            scores = prediction.scores.numpy()
            outputs.append(OutputTensor(name, "FP32", list(scores.shape), scores))
        else:
            items = prediction.labels if name == "label" else prediction.served.classes
            outputs.append(
                OutputTensor(name, "BYTES", [len(items)], [item.encode() for item in items])
            )
    parameters: dict[str, str | int | bool] = {"adapter_version": version}
    if ids:
        parameters["prediction_id"] = ",".join(ids)
    return InferResult(request.model_name, version, request.id, outputs, parameters)


def _deadline(deadline: float | None, parameters: dict) -> float | None:
    """The transport's deadline, or the request's `timeout` parameter (µs) if that is sooner."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return deadline
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise InvalidInput(
            f"parameter 'timeout' is {timeout!r}; send a positive integer (microseconds)"
        )
    own = time.monotonic() + timeout / 1e6
    return own if deadline is None else min(deadline, own)


def _config_type(datatype: str) -> str:
    return {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}[datatype]


def model_name(name: str) -> str:
    if not name:
        raise InvalidInput("model_name is empty; set it to the adapter id")
    return name


def input_spec(inputs: InputSpec) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of the model input: BYTES texts [N, 1] (or [N]), or FP32 images
    [N, C, H, W] of the deployment's one shape. Texts are advertised as [-1, 1], Triton's
    layout for one string per row: load generators that build requests from the metadata
    (perf_analyzer) need a per-row dimension; [N] is accepted as well."""
    if inputs.kind == "text":
        return TEXT_INPUT, "BYTES", [-1, 1]
    return IMAGE_INPUT, "FP32", [-1, *inputs.shape]


# -- input tensors → rows ----------------------------------------------------------------------------
def request_rows(inputs: list[InputTensor], spec: InputSpec) -> list:
    """The request's rows: strings for a text model, [C, H, W] float tensors of the
    deployment's one shape for an image model — a request of another shape is refused here,
    before the batcher, so rows of different shapes never meet in a batch."""
    name, datatype, _ = input_spec(spec)
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input named {name!r}, got {len(inputs)}")
    tensor = inputs[0]
    if tensor.name != name:
        raise InvalidInput(f"input is named {tensor.name!r}; name it {name!r}")
    if tensor.datatype != datatype:
        kind = "text: send BYTES (UTF-8)" if datatype == "BYTES" else "images: send FP32"
        raise InvalidInput(
            f"input {name!r} has datatype {tensor.datatype}; this model takes {kind}"
        )
    return _texts(tensor) if datatype == "BYTES" else _images(tensor, spec)


def _images(tensor: InputTensor, spec: InputSpec) -> list[torch.Tensor]:
    shape = list(tensor.shape)
    if len(shape) < 2 or not spec.accepts(tuple(shape[1:])):
        grey = f" (or [N, {spec.shape[1]}, {spec.shape[2]}])" if spec.shape[0] == 1 else ""
        raise InvalidInput(
            f"input {IMAGE_INPUT!r} has shape {shape}; this model takes images of one shape: "
            f"send [N, {', '.join(map(str, spec.shape))}]{grey}"
        )
    if tensor.raw is not None:
        array = decode_fp32(tensor.raw, shape)
    else:
        array = typed_fp32([] if tensor.data is None else tensor.data, shape)
    if not np.isfinite(array).all():
        raise InvalidInput(f"input {IMAGE_INPUT!r} holds NaN or infinite values")
    return list(torch.from_numpy(array.reshape(len(array), *spec.shape).copy()))


def _texts(tensor: InputTensor) -> list[str]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(
            f"input {TEXT_INPUT!r} has shape {shape}; send one text per row: [N] or [N, 1]"
        )
    count = element_count(tensor.shape)
    if tensor.raw is not None:
        items = decode_bytes(tensor.raw, count)
    else:
        items = [] if tensor.data is None else list(tensor.data)
        if len(items) != count:
            raise InvalidInput(f"input holds {len(items)} strings but its shape says {count}")
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as error:
        raise InvalidInput(f"input {TEXT_INPUT!r} is not valid UTF-8: {error}") from error
