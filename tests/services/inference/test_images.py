"""FP32 inputs for the image backbone (EfficientNet-Lite0): raw and typed contents, through
tritonclient and the raw stubs; one image shape per deployment, a request of another shape is
INVALID_ARGUMENT naming the expected one, and mixed shapes in concurrent requests never reach
a batch together (never INTERNAL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial.codec import InputSpec
from perennial.learners import LearnerConfig, build_learner
from perennial.pet import LoRAConfig
from perennial.store import to_safetensors
from services.inference.plane import ServingConfig

GREY = InputSpec("image", (1, 28, 28))
LEARNERS = {
    "lae": LearnerConfig(
        learner="lae",
        pet=LoRAConfig(rank=2, target_modules=("_project_conv",), layers=(1, 2)),
        lr=1e-2,
    ),
    "fsa": LearnerConfig(learner="fsa", projection_dim=32, warmup_examples=4, warmup_cap=4,
                         warmup_min_classes=2, warmup_min_count=2, warmup_epochs=1),
}  # fmt: skip


@pytest.fixture(scope="module")
def image_backbone():
    from perennial.backbone import ImageBackbone

    return ImageBackbone.load(image_size=32)


@pytest.fixture(params=sorted(LEARNERS))
def image_service(start_service, image_backbone, request):
    """An image deployment of 1×28×28 grey images serving one adapter ("fashion") of LAE
    (per-version forwards) or FSA (the default: one frozen forward for every row)."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(28, 28, generator=generator) for _ in range(4)]
    learner = build_learner(image_backbone, LEARNERS[request.param])
    learner.learn(images, ["shirt", "shoe", "shirt", "shoe"])
    service = start_service(backbone=image_backbone, serving=ServingConfig(inputs=GREY))
    service.store.publish(
        "fashion",
        to_safetensors(*learner.state()),
        parent=None,
        offsets={},
        examples=learner.examples,
        classes=learner.classes,
    )
    service.ready()
    return service, learner


def test_fp32_images_raw_and_typed_match_the_model(image_service, image_backbone):
    service, learner = image_service
    batch = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = service.plane.get("fashion").model.scores(
            image_backbone, list(torch.from_numpy(batch))
        )
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)  # raw_input_contents
    result = service.client().infer("fashion", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.numpy(), atol=1e-5)
    assert {label.decode() for label in result.as_numpy("label")} <= {"shirt", "shoe"}

    typed = service_pb2.ModelInferRequest(model_name="fashion")
    typed.inputs.add(
        name="image", datatype="FP32", shape=list(batch.shape)
    ).contents.fp32_contents.extend(batch.ravel().tolist())
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    response = stub.ModelInfer(typed)
    assert response.raw_output_contents[0] == result.get_response().raw_output_contents[0]
    metadata = service.client().get_model_metadata("fashion")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("image", "FP32", [-1, 1, 28, 28])
    ]
    config = service.client().get_model_config("fashion", as_json=True)["config"]
    assert config["input"] == [
        {"name": "image", "data_type": "TYPE_FP32", "dims": ["1", "28", "28"]}
    ]


@pytest.mark.parametrize(
    ("datatype", "shape", "message"),
    [
        ("BYTES", [1], "send FP32"),
        ("FP32", [28, 28], "send [N, 1, 28, 28] (or [N, 28, 28])"),
        ("FP32", [1, 3, 28, 28], "has shape [1, 3, 28, 28]; this model takes images of one shape"),
        ("FP32", [1, 32, 32], "send [N, 1, 28, 28]"),
        ("FP32", [1, 28, 28], "needs 3136"),
    ],
)
def test_bad_image_requests_say_what_to_fix(image_service, datatype, shape, message):
    service, _ = image_service
    request = service_pb2.ModelInferRequest(model_name="fashion")
    request.inputs.add(name="image", datatype=datatype, shape=shape)
    request.raw_input_contents.append(b"\x00" * 16)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert (
        caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and message in caught.value.details()
    )


def test_a_plane_refuses_a_backbone_that_does_not_take_its_inputs(image_backbone, tiny_backbone):
    from services.inference.plane import DataPlane

    with pytest.raises(ValueError, match="ImageBackbone does not take text inputs"):
        DataPlane(image_backbone, None, None, ServingConfig())
    with pytest.raises(ValueError, match="TextBackbone does not take image inputs"):
        DataPlane(tiny_backbone, None, None, ServingConfig(inputs=GREY))


def test_a_snapshot_of_the_text_backbone_is_failed_precondition(image_service, tiny_backbone):
    """A text adapter's snapshot on an image deployment: refused, saying which settings to
    change — not INTERNAL, and not DATA_LOSS (nothing is corrupted)."""
    service, _ = image_service
    learner = build_learner(tiny_backbone, LearnerConfig(learner="ranpac", projection_dim=16))
    learner.learn(["a small dog", "a tall tree"], ["animal", "plant"])
    service.store.publish(
        "words",
        to_safetensors(*learner.state()),
        parent=None,
        offsets={},
        examples=2,
        classes=learner.classes,
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    request = _request([1, 28, 28])
    request.model_name = "words"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "set PERENNIAL_BACKBONE=text" in caught.value.details()


def _request(shape: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="fashion")
    request.inputs.add(name="image", datatype="FP32", shape=shape)
    request.raw_input_contents.append(np.full(shape, 0.5, dtype="<f4").tobytes())
    return request


def test_mixed_shapes_in_concurrent_requests_are_answered_or_refused_never_internal(
    image_service,
):
    """Right-shaped requests (with or without the grey channel) are answered, others are
    INVALID_ARGUMENT saying the shape; however they interleave, no batch fails (INTERNAL)."""
    service, _ = image_service
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    shapes = [[2, 28, 28], [3, 1, 28, 28], [2, 32, 32], [1, 3, 28, 28], [2, 1, 14, 14]] * 8

    def call(shape: list[int]) -> tuple[list[int], grpc.StatusCode, str]:
        try:
            response = stub.ModelInfer(_request(shape), timeout=60)
        except grpc.RpcError as error:
            return shape, error.code(), error.details()
        return shape, grpc.StatusCode.OK, str(response.outputs[0].shape)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, shapes))
    for shape, code, details in answers:
        if shape[1:] in ([28, 28], [1, 28, 28]):
            assert code == grpc.StatusCode.OK, details
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "send [N, 1, 28, 28]" in details
    codes = {
        sample.labels["code"]
        for metric in service.registry.collect()
        if metric.name == "perennial_inference_requests"
        for sample in metric.samples
        if sample.value
    }
    assert codes == {"OK", "INVALID_ARGUMENT"}
