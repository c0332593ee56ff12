"""Device selection (the CPU path is what runs here; CUDA requests fail clearly without a GPU)."""

import pytest
import torch

from perennial import device
from perennial.config import ConfigError


def test_auto_picks_what_torch_sees():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.select("auto").type == expected
    assert device.select("CPU") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(ConfigError, match="no CUDA device; use auto or cpu"):
        device.select("cuda")


def test_nonsense_is_rejected():
    with pytest.raises(ConfigError, match="use auto, cpu, cuda"):
        device.select("tpu-please")


def test_cpu_features_come_back_as_float32_on_the_cpu(tiny_backbone):
    features = tiny_backbone(tiny_backbone.tokenize(["a dog"]))
    assert features.device.type == "cpu" and features.dtype == torch.float32
