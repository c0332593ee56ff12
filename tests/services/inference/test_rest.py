"""The Open Inference Protocol over HTTP/REST: through tritonclient.http and plain HTTP requests
(what curl sends), JSON and the binary tensor extension, the same answers, limits, errors,
batcher, token and TLS as gRPC."""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import threading
import time

import numpy as np
import pytest
import torch
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from perennial.grpc_errors import INTERNAL_MESSAGE
from perennial.grpc_security import ServerSecurity
from services.inference.batching import BatchingConfig
from services.inference.plane import ServerConfig, ServingConfig
from services.inference.rest import HEADER_LENGTH

from .conftest import TEXTS, publish
from .test_images import image_backbone, image_service  # noqa: F401  (fixtures)
from .test_security import _security, pki  # noqa: F401  (fixture)

TIMEOUT = 10  # seconds: every HTTP call in this file is bounded


def call(service, method: str, path: str, body=None, headers=None, context=None):
    """One plain HTTP request (what curl sends): (status, headers, body bytes)."""
    host, port = service.rest_address.split(":")
    if context is None:
        connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    else:
        connection = http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT, context=context)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def json_infer(texts=TEXTS, **extra) -> dict:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        **extra,
    }


def http_text_input(texts: list[str], binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary)
    return tensor


@pytest.fixture
def ready(service, learner):
    manifest = publish(service.store, learner)
    service.ready()
    return service, manifest


def test_health_follows_the_backbone_and_metadata_lists_the_extensions(service):
    assert call(service, "GET", "/v2/health/live")[0] == 200
    status, _, body = call(service, "GET", "/v2/health/ready")
    assert (status, json.loads(body)) == (503, {"ready": False})
    client = service.http_client()
    assert client.is_server_live() and not client.is_server_ready()
    status, _, body = call(service, "POST", "/v2/models/demo/infer", json_infer())
    assert status == 503 and "starting or draining" in json.loads(body)["error"]
    service.ready()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "perennial" and metadata["version"]
    assert {"model_repository", "model_configuration", "statistics", "binary_tensor_data"} <= set(
        metadata["extensions"]
    )


def test_tritonclient_http_gets_what_grpc_gets(ready):
    service, manifest = ready
    expected = service.infer()
    client = service.http_client()
    result = client.infer("demo", [http_text_input(TEXTS)])  # binary in, binary out
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), expected.as_numpy("probabilities")
    )
    assert list(result.as_numpy("label")) == list(expected.as_numpy("label"))
    assert list(result.as_numpy("classes")) == list(expected.as_numpy("classes"))
    response = result.get_response()
    assert response["model_version"] == manifest.version
    assert response["parameters"]["adapter_version"] == manifest.version
    as_json = client.infer(
        "demo",
        [http_text_input(TEXTS, binary=False)],
        outputs=[triton_http.InferRequestedOutput("label", binary_data=False)],
        request_id="r-1",
    )
    assert [o["name"] for o in as_json.get_response()["outputs"]] == ["label"]
    labels = [label.decode() for label in expected.as_numpy("label")]
    assert list(as_json.as_numpy("label")) == labels  # JSON carries BYTES as strings
    assert as_json.get_response()["id"] == "r-1"
    pinned = client.infer("demo", [http_text_input(TEXTS)], model_version=manifest.version)
    assert pinned.get_response()["model_version"] == manifest.version
    compressed = client.infer(
        "demo", [http_text_input(TEXTS)], request_compression_algorithm="gzip"
    )
    np.testing.assert_array_equal(
        compressed.as_numpy("probabilities"), expected.as_numpy("probabilities")
    )


def test_plain_json_requests_as_curl_sends_them(ready):
    service, manifest = ready
    status, headers, body = call(service, "POST", "/v2/models/demo/infer", json_infer())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(body)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert (
        outputs["probabilities"]["shape"] == [3, 3] and len(outputs["probabilities"]["data"]) == 9
    )
    assert outputs["label"]["data"] == [
        label.decode() for label in service.infer().as_numpy("label")
    ]
    assert answer["model_version"] == manifest.version
    nested = json_infer([["a small dog"], ["a tall tree"]])
    nested["inputs"][0]["shape"] = [2]
    assert call(service, "POST", "/v2/models/demo/infer", nested)[0] == 200
    status, _, body = call(service, "GET", "/v2/models/demo")
    assert status == 200 and json.loads(body)["versions"] == [manifest.version]
    assert call(service, "GET", f"/v2/models/demo/versions/{manifest.version}/ready")[0] == 200
    assert call(service, "GET", "/v2/models/nope/ready")[0] == 404
    client = service.http_client()
    assert client.is_model_ready("demo") and not client.is_model_ready("nope")
    assert client.get_model_metadata("demo")["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
    ]


def _binary_body(texts: list[bytes], extra: bytes = b"", size_delta: int = 0):
    from services.inference.tensors import encode_bytes

    raw = encode_bytes(texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts)],
                    "parameters": {"binary_data_size": len(raw) + size_delta},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw + extra, {HEADER_LENGTH: str(len(header))}


def test_binary_tensor_extension_by_hand(ready):
    service, _ = ready
    body, headers = _binary_body([b"a small dog"])
    status, answer_headers, answer = call(service, "POST", "/v2/models/demo/infer", body, headers)
    assert status == 200
    length = int(answer_headers[HEADER_LENGTH])
    document = json.loads(answer[:length])
    [label] = document["outputs"]
    assert label["parameters"]["binary_data_size"] == len(answer) - length
    for broken, message in [
        (_binary_body([b"a dog"], extra=b"xx"), "no input claims"),
        (_binary_body([b"a dog"], size_delta=5), "does not fit"),
        ((body, {HEADER_LENGTH: str(len(body) + 1)}), HEADER_LENGTH),
        ((body, {HEADER_LENGTH: "many"}), HEADER_LENGTH),
    ]:
        status, _, answer = call(service, "POST", "/v2/models/demo/infer", *broken)
        assert status == 400 and message in json.loads(answer)["error"], answer


ERRORS = [  # (what, path, body, HTTP status, part of the message) — gRPC's codes, mapped
    ("unknown adapter", "/v2/models/nope/infer", json_infer(), 404, "no snapshot"),
    (
        "unknown version",
        "/v2/models/demo/versions/v000042-abc/infer",
        json_infer(),
        404,
        "no version",
    ),
    ("not JSON", "/v2/models/demo/infer", b"{oops", 400, "not valid JSON"),
    ("not an object", "/v2/models/demo/infer", b"[1]", 400, "JSON object"),
    ("no inputs", "/v2/models/demo/infer", {"outputs": []}, 400, "inputs must be a JSON list"),
    (
        "wrong datatype",
        "/v2/models/demo/infer",
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        400,
        "send BYTES",
    ),
    (
        "shape mismatch",
        "/v2/models/demo/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
        400,
        "shape says 2",
    ),  # fmt: skip
    (
        "numbers as text",
        "/v2/models/demo/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]},
        400,
        "must be strings",
    ),  # fmt: skip
    ("blank text", "/v2/models/demo/infer", json_infer(["  "]), 400, "element 0 is empty"),
    ("text too long", "/v2/models/demo/infer", json_infer(["x" * 101]), 400, "limit is 100"),
    ("too many rows", "/v2/models/demo/infer", json_infer(["a"] * 9), 400, "limit is 8"),
    (
        "unknown output",
        "/v2/models/demo/infer",
        json_infer(outputs=[{"name": "logits"}]),
        400,
        "unknown output",
    ),
    (
        "bad timeout",
        "/v2/models/demo/infer",
        json_infer(parameters={"timeout": "soon"}),
        400,
        "microseconds",
    ),
    ("body too large", "/v2/models/demo/infer", json_infer(["x" * 70_000]), 413, "exceeds 65536"),
    ("no such route", "/v2/nothing", None, 404, "Not Found"),
    ("wrong method", "/v2/models/demo/infer", None, 405, "Method Not Allowed"),
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
    ("path", "body", "status", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_have_the_http_status_of_their_grpc_code(limited, path, body, status, message):
    method = "GET" if body is None and "infer" not in path else ("PUT" if body is None else "POST")
    got, headers, answer = call(limited, method, path, body)
    assert headers["Content-Type"].startswith("application/json")
    assert (got, message in json.loads(answer)["error"]) == (status, True), answer


def test_a_bug_is_500_with_a_generic_message(ready):
    service, _ = ready
    service.plane.validate = None  # a programming error inside the operation
    status, _, body = call(service, "POST", "/v2/models/demo/infer", json_infer())
    assert (status, json.loads(body)) == (500, {"error": INTERNAL_MESSAGE})


def test_rest_and_grpc_requests_share_one_batch_the_queue_and_the_metrics(start_service, learner):
    service = start_service(
        batching=BatchingConfig(max_batch_size=8, max_queue_size=2, max_queue_delay_seconds=0.0)
    )
    publish(service.store, learner)
    service.ready()
    gate = service.gate_model()
    blocker = threading.Thread(target=service.infer, kwargs={"texts": ["a dog"]})
    blocker.start()  # held in the model: the next two requests wait in the queue together
    _wait(lambda: service.sample("perennial_inference_queue_duration_seconds_count") == 1)
    answers: dict[str, object] = {}
    grpc_call = threading.Thread(target=lambda: answers.update(grpc=service.infer(texts=["a"])))
    rest_call = threading.Thread(
        target=lambda: answers.update(rest=call(service, "POST", "/v2/models/demo/infer",
                                                json_infer(["b", "c"]))))  # fmt: skip
    grpc_call.start()
    rest_call.start()
    _wait(lambda: service.servicer.batcher._rows == 3)
    status, _, body = call(service, "POST", "/v2/models/demo/infer", json_infer(["d"]))
    assert status == 429 and "queue is full" in json.loads(body)["error"]  # the same bounded queue
    gate.set()
    for thread in (blocker, grpc_call, rest_call):
        thread.join(timeout=TIMEOUT)
    assert answers["rest"][0] == 200 and answers["grpc"].as_numpy("label").shape == (1,)
    # two batches: the blocker alone, then the gRPC and the REST request in ONE model call
    assert service.sample("perennial_inference_batch_size_rows_count") == 2
    assert service.sample("perennial_inference_batch_size_rows_sum") == 4
    ok = {"adapter": "demo", "code": "OK"}
    assert service.sample("perennial_inference_requests_total", ok) == 3
    limit = {"adapter": "demo", "code": "RESOURCE_EXHAUSTED"}
    assert service.sample("perennial_inference_requests_total", limit) == 1


def test_the_timeout_parameter_is_a_deadline_on_both_transports(ready):
    service, _ = ready
    gate = service.gate_model()
    blocker = threading.Thread(target=service.infer)
    blocker.start()
    _wait(lambda: service.sample("perennial_inference_queue_duration_seconds_count") == 1)
    status, _, body = call(
        service, "POST", "/v2/models/demo/infer", json_infer(parameters={"timeout": 100_000})
    )
    assert status == 504 and "deadline" in json.loads(body)["error"]
    with pytest.raises(InferenceServerException) as caught:
        service.client().infer("demo", [_grpc_text("a dog")], timeout=100_000)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    gate.set()
    blocker.join(timeout=TIMEOUT)


def _grpc_text(text: str):
    from .conftest import text_input

    return text_input([text])


def test_bearer_token_on_every_route_but_health(start_service, learner):
    service = start_service(security=ServerSecurity(token="s3cret"))
    publish(service.store, learner)
    service.ready()
    assert call(service, "GET", "/v2/health/ready")[0] == 200  # probes send no token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        status, answer_headers, body = call(service, "GET", "/v2/models/demo", headers=headers)
        assert status == 401 and "bearer token" in json.loads(body)["error"]
        assert answer_headers["WWW-Authenticate"] == "Bearer"
    client = service.http_client()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("demo", [http_text_input(TEXTS)])
    assert caught.value.status() == "401"
    good = {"Authorization": "Bearer s3cret"}
    assert client.infer("demo", [http_text_input(TEXTS)], headers=good).as_numpy("label").size == 3
    assert call(service, "POST", "/v2/repository/index", headers=good)[0] == 200


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls_with_the_grpc_certificates(start_service, learner, pki, mutual):  # noqa: F811
    service = start_service(security=_security(pki, mutual=mutual))
    publish(service.store, learner)
    service.ready()
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if mutual:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            call(service, "GET", "/v2/health/ready", context=context)  # no client certificate
        context.load_cert_chain(pki["client_cert"], pki["client_key"])
    status, _, body = call(service, "POST", "/v2/models/demo/infer", json_infer(), context=context)
    assert status == 200 and json.loads(body)["model_version"]
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        call(service, "GET", "/v2/health/ready")  # plaintext to a TLS port
    options = {"ca_certs": str(pki["ca"])}
    if mutual:
        options |= {"certfile": str(pki["client_cert"]), "keyfile": str(pki["client_key"])}
    client = triton_http.InferenceServerClient(
        f"localhost:{service.rest.port}", ssl=True, ssl_options=options
    )
    assert client.infer("demo", [http_text_input(["a dog"])]).as_numpy("label").shape == (1,)


def test_fp32_images_as_binary_and_as_json(image_service, image_backbone):  # noqa: F811
    service, _ = image_service
    batch = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = service.plane.get("fashion").model.scores(
            image_backbone, list(torch.from_numpy(batch))
        )
    tensor = triton_http.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = service.http_client().infer("fashion", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.numpy(), atol=1e-5)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 28, 28],
                        "data": batch.tolist()}]}  # fmt: skip
    status, _, answer = call(service, "POST", "/v2/models/fashion/infer", body)
    probabilities = {o["name"]: o for o in json.loads(answer)["outputs"]}["probabilities"]
    np.testing.assert_allclose(np.array(probabilities["data"]).reshape(2, -1), expected, atol=1e-5)
    body["inputs"][0]["data"] = ["x"] * batch.size
    status, _, answer = call(service, "POST", "/v2/models/fashion/infer", body)
    assert status == 400 and "must be numbers" in json.loads(answer)["error"]


def test_a_compressed_body_is_limited_after_decompression(limited):
    body = gzip.compress(json.dumps(json_infer(["x" * 80] * 1000)).encode())
    assert len(body) < 64 * 1024
    status, _, answer = call(
        limited, "POST", "/v2/models/demo/infer", body, {"Content-Encoding": "gzip"}
    )
    assert status == 413 and "exceeds" in json.loads(answer)["error"]


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_an_image_of_another_shape_is_400_naming_the_shape(image_service):  # noqa: F811
    service, _ = image_service
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8],
                        "data": [0.5] * 192}]}  # fmt: skip
    status, _, answer = call(service, "POST", "/v2/models/fashion/infer", body)
    assert status == 400
    assert "send [N, 1, 28, 28] (or [N, 28, 28])" in json.loads(answer)["error"]
