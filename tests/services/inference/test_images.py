"""FP32 inputs for a non-text backbone (EfficientNet-Lite0): raw and typed contents, through
tritonclient and the raw stubs, batched per version and image shape."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perennial.learners import LearnerConfig, build_learner
from perennial.pet import LoRAConfig
from perennial.store import to_safetensors


@pytest.fixture(scope="module")
def image_backbone():
    from perennial.backbone import ImageBackbone

    return ImageBackbone.load(image_size=32)


@pytest.fixture
def image_service(start_service, image_backbone):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(28, 28, generator=generator) for _ in range(4)]
    learner = build_learner(
        image_backbone,
        LearnerConfig(
            learner="lae",
            pet=LoRAConfig(rank=2, target_modules=("_project_conv",), layers=(1, 2)),
            lr=1e-2,
        ),
    )
    learner.learn(images, ["shirt", "shoe", "shirt", "shoe"])
    service = start_service(backbone=image_backbone)
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
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("image", "FP32")]


@pytest.mark.parametrize(
    ("datatype", "shape", "message"),
    [
        ("BYTES", [1], "send FP32"),
        ("FP32", [28, 28], "send [N, H, W]"),
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
