"""REST layer of the inference service: the Open Inference Protocol over HTTP ↔
`InferenceOperations` (the same operations the gRPC servicer calls), nothing else.

Routes (KServe v2 and Triton; `{version}` optional everywhere it appears):

    GET  /v2/health/live   /v2/health/ready            200, or 503 while starting or draining
    GET  /v2                                           server metadata
    GET  /v2/models/{name}[/versions/{version}]        model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready  200 ready, 404 no such adapter or version
    POST /v2/models/{name}[/versions/{version}]/infer  inference: JSON, or the binary tensor extension
    GET  /v2/models/{name}[/versions/{version}]/config model configuration (extension)
    GET  /v2/models[/{name}[/versions/{version}]]/stats statistics (extension)
    POST /v2/repository/index                          model repository index (extension)

Binary tensor extension: a body whose JSON header is `Inference-Header-Content-Length` bytes
long, followed by the inputs that carry `parameters.binary_data_size`, in order; outputs
requested with `parameters.binary_data` (or all, with the request parameter
`binary_data_output`) come back the same way. gzip/deflate request bodies are decompressed.

Errors are `{"error": message}` with the HTTP status of the domain error's gRPC code
(`perennial.grpc_errors.HTTP_STATUS`); a bug is 500 with a generic message. The bearer token
and TLS / mutual TLS are the gRPC port's (`perennial.grpc_security.ServerSecurity`); the
health routes need no token, as gRPC health needs none. aiohttp's event loop runs on one
thread; operations block (the batcher), so they run on `workers` threads, and a request
beyond `workers` in flight is refused at once with 429 — as gRPC refuses beyond its workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiohttp import web

from perennial.errors import InvalidInput, ResourceExhausted
from perennial.grpc_errors import INTERNAL_MESSAGE, STATUS, http_status_of
from perennial.grpc_security import ServerSecurity
from services.inference.operations import (
    InferenceOperations,
    InferRequest,
    InferResult,
    InputTensor,
)
from services.inference.plane import ServerConfig
from services.inference.tensors import encode_bytes, encode_fp32

log = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # probes send no token
MAX_NESTING = 8  # JSON `data` may nest lists per dimension; tensors here have at most 4


class _Cancellation:
    """Callbacks to run if the client goes away (the operation registers the job's cancel)."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def cancel(self) -> None:
        for callback in self.callbacks:
            callback()


class RestServer:
    """The HTTP server on its own event-loop thread: `start(host, port)`, `stop(grace)`."""

    def __init__(
        self,
        operations: InferenceOperations,
        config: ServerConfig = ServerConfig(),
        security: ServerSecurity = ServerSecurity(),
    ) -> None:
        self.operations = operations
        self.config = config
        self.security = security
        self.port: int | None = None
        self._in_flight = 0  # touched only on the event loop's thread
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest", daemon=True)

    def start(self, host: str, port: int) -> int:
        """Listen (TLS when configured); returns the bound port. A taken port raises OSError."""
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(
                self._start(host, port), self._loop
            ).result()
        except BaseException:
            self._close_loop()
            raise
        log.info(
            "REST port",
            extra={
                "fields": {
                    "address": f"{host}:{self.port}",
                    "tls": self.security.tls,
                    "mutual_tls": self.security.mutual_tls,
                    "auth": bool(self.security.token),
                }
            },
        )
        return self.port

    async def _start(self, host: str, port: int) -> int:
        # requests still running when `stop`'s grace is over get one more second, then go
        self._runner = web.AppRunner(
            self.application(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host, port, ssl_context=self.security.ssl_context(), reuse_port=False
        )
        await site.start()
        return self._runner.addresses[0][1]

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, give requests in flight up to `grace` seconds, close."""
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop)
            try:
                future.result(timeout=grace + 10)
            except Exception:
                log.exception("REST server did not stop cleanly")
        self._close_loop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _stop(self, grace: float) -> None:
        for site in list(self._runner.sites):
            await site.stop()  # no new connections
        deadline = self._loop.time() + grace
        while self._in_flight and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self._runner.cleanup()

    def _close_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # -- the application -----------------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._authenticate],
            client_max_size=self.config.max_message_bytes,
        )
        ops = self.operations
        get, post = app.router.add_get, app.router.add_post
        get("/v2/health/live", self._health(ops.server_live, "live"))
        get("/v2/health/ready", self._health(ops.server_ready, "ready"))
        get("/v2", self._json(lambda r: ops.server_metadata()))
        post("/v2/repository/index", self._repository_index)
        get("/v2/models/stats", self._json(lambda r: ops.model_statistics()))
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            get(prefix, self._json(lambda r: ops.model_metadata(*_model(r))))
            get(prefix + "/ready", self._model_ready)
            get(prefix + "/config", self._json(lambda r: ops.model_config(*_model(r))))
            get(prefix + "/stats", self._json(lambda r: ops.model_statistics(*_model(r))))
            post(prefix + "/infer", self._infer)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        """Domain errors → their HTTP status; aiohttp's own (404 route, 413 body) → JSON too."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            message = error.reason
            if error.status == 413:
                message = (
                    f"the request body exceeds {self.config.max_message_bytes} bytes "
                    "(PERENNIAL_MAX_MESSAGE_BYTES): split it"
                )
            return _error(error.status, message)
        except tuple(STATUS) as error:
            return _error(http_status_of(error), str(error))
        except Exception:
            log.exception("internal error", extra={"fields": {"path": request.path}})
            return _error(500, INTERNAL_MESSAGE)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or self.security.authorized(
            request.headers.get("Authorization", "")
        ):
            return await handler(request)
        response = _error(
            401, "missing or wrong bearer token: send header 'Authorization: Bearer <token>'"
        )
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def _call(self, function: Callable, *args, cancellation: _Cancellation | None = None):
        """Run a blocking operation on the worker threads; at most `workers` at once."""
        if self._in_flight >= self.config.workers:
            raise ResourceExhausted(
                f"{self.config.workers} requests in flight; retry with backoff or add replicas"
            )
        self._in_flight += 1
        try:
            return await self._loop.run_in_executor(self._executor, function, *args)
        except asyncio.CancelledError:  # the client went away: skip the work if not done
            if cancellation is not None:
                cancellation.cancel()
            raise
        finally:
            self._in_flight -= 1

    def _health(self, operation: Callable[[], dict], key: str):
        async def handler(request: web.Request) -> web.Response:
            answer = operation()
            return web.json_response(answer, status=200 if answer[key] else 503)

        return handler

    def _json(self, operation: Callable[[web.Request], dict]):
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(await self._call(operation, request))

        return handler

    async def _model_ready(self, request: web.Request) -> web.Response:
        answer = await self._call(self.operations.model_ready, *_model(request))
        return web.json_response(answer, status=200 if answer["ready"] else 404)

    async def _repository_index(self, request: web.Request) -> web.Response:
        body = await request.read()
        options = _json_object(body) if body.strip() else {}
        ready = options.get("ready", False)
        index = await self._call(self.operations.repository_index, bool(ready))
        return web.json_response(index["models"])  # over HTTP the index is a bare list

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        name, version = _model(request)
        header_length = request.headers.get(HEADER_LENGTH)
        cancellation = _Cancellation()

        def run() -> tuple[bytes, int | None]:
            infer_request, binary = parse_infer_request(name, version, body, header_length)
            result = self.operations.infer(infer_request, None, cancellation.add)
            return encode_infer_result(result, binary)

        payload, json_length = await self._call(run, cancellation=cancellation)
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        response = web.Response(body=payload, content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(json_length)
        return response


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- JSON and binary tensors ↔ the operations' request and result ---------------------------------
def _json_object(text: bytes) -> dict:
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    return document


def parse_infer_request(
    name: str, version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, dict[str, bool]]:
    """The operations' request, and which outputs to answer in binary (by name; "" = the
    default for outputs not named)."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {header_length!r}; the body has {len(body)} bytes"
            )
        body, binary = body[:length], body[length:]
    document = _json_object(body)
    parameters = _object(document.get("parameters", {}), "parameters")
    inputs, offset = [], 0
    for index, item in enumerate(_list(document.get("inputs"), "inputs")):
        item = _object(item, f"inputs[{index}]")
        tensor_name, datatype = item.get("name"), item.get("datatype")
        shape = item.get("shape")
        if not isinstance(tensor_name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{index}] needs a string 'name' and 'datatype'")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise InvalidInput(f"inputs[{index}] 'shape' must be a list of integers")
        size = _object(item.get("parameters", {}), f"inputs[{index}].parameters").get(
            "binary_data_size"
        )
        if size is not None:
            if not _is_int(size) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"inputs[{index}] binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} binary bytes left in the body"
                )
            inputs.append(
                InputTensor(tensor_name, datatype, shape, raw=binary[offset : offset + size])
            )
            offset += size
        else:
            data = _flatten(item.get("data"), f"inputs[{index}].data")
            inputs.append(
                InputTensor(tensor_name, datatype, shape, data=_typed(data, datatype, index))
            )
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the JSON that no input claims "
            "(parameters.binary_data_size)"
        )
    outputs, binary_outputs = [], {"": parameters.get("binary_data_output") is True}
    for index, item in enumerate(_list(document.get("outputs", []), "outputs")):
        item = _object(item, f"outputs[{index}]")
        if not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] needs a string 'name'")
        outputs.append(item["name"])
        options = _object(item.get("parameters", {}), f"outputs[{index}].parameters")
        binary_outputs[item["name"]] = options.get("binary_data") is True
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(name, inputs, version, request_id, outputs, parameters), binary_outputs


def encode_infer_result(result: InferResult, binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    document: dict = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        document["id"] = result.id
    document["parameters"] = dict(result.parameters)
    outputs, chunks = [], []
    for output in result.outputs:
        entry: dict = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if binary.get(output.name, binary[""]):
            raw = (
                encode_fp32(output.data) if output.datatype == "FP32" else encode_bytes(output.data)
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif output.datatype == "FP32":
            entry["data"] = np.asarray(output.data, dtype=np.float32).ravel().tolist()
        else:
            entry["data"] = [item.decode("utf-8", errors="replace") for item in output.data]
        outputs.append(entry)
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _typed(data: list, datatype: str, index: int):
    """JSON values as the operations take typed contents: bytes for BYTES, float32 for FP32."""
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in data):
            raise InvalidInput(
                f"inputs[{index}] BYTES data must be strings (binary: use the binary extension)"
            )
        return [item.encode("utf-8") for item in data]
    if datatype == "FP32":
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in data):
            raise InvalidInput(f"inputs[{index}] FP32 data must be numbers")
        return np.asarray(data, dtype=np.float32)
    return data  # any other datatype: the operation says which one the model takes


def _flatten(value, where: str, depth: int = 0) -> list:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list (or binary, with parameters.binary_data_size)")
    if depth > MAX_NESTING:
        raise InvalidInput(f"{where} nests deeper than {MAX_NESTING} lists")
    if not any(isinstance(item, list) for item in value):
        return value
    flat = []
    for item in value:
        flat.extend(_flatten(item, where, depth + 1) if isinstance(item, list) else [item])
    return flat


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a JSON list")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
