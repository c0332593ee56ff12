"""The inference gRPC service in-process, called by tritonclient, with snapshots in real Redis."""

import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from perennial.learner import LAELearner, LearnerConfig
from perennial.localstack import free_port
from perennial.metrics import InferenceMetrics
from perennial.pet import LoRAConfig
from perennial.serving import DataPlane
from perennial.store import SnapshotStore, to_safetensors
from services.inference.server import InferenceServicer, build_server, set_health

TEXTS = ["a small dog", "a tall tree", "an old house"]
LABELS = ["animal", "plant", "artifact"]


def _publish(store, learner, parent=None):
    return store.publish("demo", to_safetensors(*learner.state()), parent=parent, offsets={},
                         examples=learner.examples, classes=learner.classes, event_times=[0.0])


@pytest.fixture
def learner(tiny_backbone):
    learner = LAELearner(tiny_backbone, LearnerConfig(lora=LoRAConfig(rank=2, layers=(0, 1)), lr=1e-2))
    learner.learn(TEXTS, LABELS)
    return learner


@pytest.fixture
def service(redis_client, tiny_backbone):
    store = SnapshotStore(redis_client)
    registry = CollectorRegistry()
    servicer, health_servicer = InferenceServicer(InferenceMetrics(registry)), health.HealthServicer()
    set_health(health_servicer, False)
    server = build_server(servicer, health_servicer, workers=4)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    plane = DataPlane(tiny_backbone, store, servicer.metrics)
    yield {"address": f"127.0.0.1:{port}", "store": store, "servicer": servicer, "plane": plane,
           "health": health_servicer, "registry": registry}
    server.stop(grace=None)


def _ready(service):
    service["servicer"].plane = service["plane"]
    set_health(service["health"], True)


def _infer(client, texts, model="demo", version="", outputs=None):
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(data)
    requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], model_version=version, outputs=requested)


def test_health_is_not_serving_until_the_backbone_is_loaded(service):
    channel = grpc.insecure_channel(service["address"])
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    assert stub.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
    client = triton.InferenceServerClient(service["address"])
    assert client.is_server_live() and not client.is_server_ready()
    with pytest.raises(InferenceServerException, match="starting or draining"):
        _infer(client, TEXTS)
    _ready(service)
    assert stub.Check(request).status == health_pb2.HealthCheckResponse.SERVING
    assert client.is_server_ready()


def test_model_infer_with_tritonclient(service, learner):
    manifest = _publish(service["store"], learner)
    _ready(service)
    client = triton.InferenceServerClient(service["address"])
    result = _infer(client, TEXTS)
    probabilities = result.as_numpy("probabilities")
    labels = [label.decode() for label in result.as_numpy("label")]
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert labels == learner.predict(TEXTS)
    response = result.get_response()
    assert response.model_version == manifest.version
    assert response.parameters["adapter_version"].string_param == manifest.version
    only_labels = _infer(client, TEXTS, outputs=["label"])
    assert only_labels.as_numpy("probabilities") is None and only_labels.as_numpy("label") is not None

    metadata = client.get_model_metadata("demo")
    assert metadata.versions == [manifest.version]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 3]), ("label", "BYTES", [-1])]
    assert client.is_model_ready("demo") and not client.is_model_ready("nope")


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r, "model_name", ""), grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty"),
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "no snapshot"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "send BYTES"),
        (lambda r: setattr(r.inputs[0], "name", "x"), grpc.StatusCode.INVALID_ARGUMENT, "name it 'text'"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 5), grpc.StatusCode.INVALID_ARGUMENT, "shape says 5"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x09\x00"), grpc.StatusCode.INVALID_ARGUMENT,
         "truncated"),
        (lambda r: r.outputs.add(name="logits"), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (lambda r: setattr(r, "model_version", "v000042-abc"), grpc.StatusCode.NOT_FOUND, "no version"),
    ],
)
def test_bad_requests_get_a_status_that_says_what_to_fix(service, learner, mutate, code, message):
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from services.inference.tensors import encode_bytes

    _publish(service["store"], learner)
    _ready(service)
    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(encode_bytes([b"a dog", b"a tree"]))
    mutate(request)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service["address"]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == code
    assert message in caught.value.details()


def test_typed_contents_are_accepted_too(service, learner):
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _publish(service["store"], learner)
    _ready(service)
    request = service_pb2.ModelInferRequest(model_name="demo")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[3])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    response = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service["address"])).ModelInfer(request)
    assert [o.name for o in response.outputs] == ["probabilities", "label"]


def test_hot_swap_and_pinned_versions(service, learner):
    store, plane = service["store"], service["plane"]
    first = _publish(store, learner)
    _ready(service)
    client = triton.InferenceServerClient(service["address"])
    assert _infer(client, TEXTS).get_response().model_version == first.version
    learner.learn(["a red fox"], ["animal"])
    second = _publish(store, learner, parent=first)
    assert plane.refresh("demo", second.version)
    assert _infer(client, TEXTS).get_response().model_version == second.version
    assert _infer(client, TEXTS, version=first.version).get_response().model_version == first.version
    assert not plane.refresh("demo", first.version)  # never swaps backwards


def _sample(service, name, adapter="demo"):
    return service["registry"].get_sample_value(name, {"adapter": adapter}) or 0.0


def test_watcher_swaps_on_announcement(service, learner):
    store, plane = service["store"], service["plane"]
    first = _publish(store, learner)
    assert plane.get("demo").version == first.version
    stop = threading.Event()
    watcher = threading.Thread(target=plane.watch, args=(stop,), daemon=True)
    watcher.start()
    while store.redis.pubsub_numsub(store.channel)[0][1] == 0:
        pass  # wait for the subscription, then announce
    learner.learn(["a red fox"], ["animal"])
    second = _publish(store, learner, parent=first)
    while plane.get("demo").version != second.version:
        pass
    stop.set()
    watcher.join()
    assert _sample(service, "perennial_inference_swaps_total") == 2
    assert _sample(service, "perennial_inference_freshness_seconds_count") == 2


def test_a_corrupt_snapshot_is_rejected_and_the_old_version_kept(service, learner):
    store, plane = service["store"], service["plane"]
    first = _publish(store, learner)
    plane.get("demo")
    learner.learn(["a red fox"], ["animal"])
    second = _publish(store, learner, parent=first)
    store.redis.set(f"perennial:{{demo}}:blob:{second.version}", b"tampered")
    assert not plane.refresh("demo")
    assert plane.get("demo").version == first.version
    assert _sample(service, "perennial_inference_verification_failures_total") == 1
